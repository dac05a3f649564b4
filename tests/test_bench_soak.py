"""bench.soak's own judging and report, on made-up responses (no server): what counts as lost."""
from __future__ import annotations

import json

from bench.soak import FAULTS, Fault, Outcome, fault_kinds, judge_plain, judge_stream, summarize, table

ERROR = {"error": {"message": "m", "type": "service_unavailable_error", "param": None, "code": "worker_died"}}


def chunk(content=None, finish=None, **extra) -> str:
    delta = {} if content is None else {"content": content}
    return json.dumps({"choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra})


def test_a_stream_completes_with_one_finish_then_done():
    payloads = [chunk(""), chunk("Hel"), chunk("lo", "length", rain={"summary": {"resubmissions": 1}}), "[DONE]"]
    judged = judge_stream(payloads)
    assert (judged.result, judged.text, judged.resumed) == ("completed", "Hello", True)


def test_streams_cut_doubled_or_failing_are_judged():
    assert judge_stream([chunk(""), chunk("Hi")]).result == "lost: stream cut before [DONE]"
    two = [chunk(""), chunk("a", "stop", rain={}), chunk(None, "stop", rain={}), "[DONE]"]
    assert judge_stream(two).result == "lost: 2 finishes"
    assert judge_stream([chunk(""), json.dumps(ERROR), "[DONE]"]).result == "error 503 worker_died"
    assert judge_stream([chunk(""), json.dumps({"error": "boom"}), "[DONE]"]).result.startswith("lost")


def test_plain_answers_and_errors_are_judged_by_whether_the_request_was_good():
    answer = {"choices": [{"finish_reason": "stop", "message": {"content": "ok"}}], "usage": {},
              "rain": {"resubmissions": 0}}
    assert judge_plain(200, answer, True).result == "completed"
    assert judge_plain(200, answer, False).result == "lost: a bad request was answered"
    bad_request = {"error": {**ERROR["error"], "type": "invalid_request_error", "code": "invalid_value"}}
    assert judge_plain(400, bad_request, False).result == "error 400 invalid_value"
    assert judge_plain(400, bad_request, True).result.startswith("lost")  # a good request is not entitled to it
    assert judge_plain(500, {"detail": "x"}, True).result == "lost: status 500 without an OpenAI error"
    assert judge_plain(200, None, True).result == "lost: a 200 without JSON"


def test_the_report_counts_losses_and_vanilla_answers_that_differ():
    outcomes = [Outcome("plain", "completed", "same", "k", started=0, ended=1),
                Outcome("stream", "completed", "other", "k", True, started=2, ended=5),
                Outcome("stream", "abandoned"), Outcome("malformed", "error 400 invalid_value"),
                Outcome("plain", "error 504 request_timeout"), Outcome("stream", "error 429 queue_full", retry_after=3),
                Outcome("plain", "lost: ReadError", started=6, ended=8, detail="connection reset")]
    faults = [Fault(at_s=3.0, kind="kill_engine", worker=0, pid=7)]
    report = summarize(outcomes, clients=2, seconds=9.0, faults=faults, latencies_ms=[1.0, 2.0, 3.0],
                       health_failures=["at 4.0 s, after 10.0 s: ReadTimeout: timed out"])
    assert (report.sent, report.completed, report.abandoned, report.resumed) == (7, 2, 1, 1)
    assert report.completed_across_fault == 1 and report.faults == {"kill_engine": 1}  # the second, 2 s to 5 s
    assert (report.errors_client, report.errors_ours, report.errors_ours_past_timeout) == (1, 2, 1)
    assert report.lost == {"lost: ReadError": 1} and (report.mismatched, report.greedy_repeats) == (1, 1)
    assert report.retry_after_s == [3]
    assert report.lost_log == [{"kind": "plain", "at_s": 6, "took_s": 2, "why": "connection reset"}]
    assert report.health_failures == 1 and "ReadTimeout" in report.health_failure_log[0]
    assert "| **all** | 7 | 2 | 1 | 3 | **1** |" in table(report)


def test_faults_are_those_the_backend_has():
    assert fault_kinds("transformers", "qwen") == ("kill_worker", "stop_worker")
    assert fault_kinds("vllm", None) == ("kill_worker", "kill_engine", "stop_worker")
    assert fault_kinds("vllm", "qwen") == FAULTS
