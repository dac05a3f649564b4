"""bench.soak's own judging and report, on made-up responses (no server): what counts as lost."""
from __future__ import annotations

import json

from bench.soak import Outcome, judge_plain, judge_stream, summarize, table

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
    outcomes = [Outcome("plain", "completed", "same", "k"), Outcome("stream", "completed", "other", "k", True),
                Outcome("stream", "abandoned"), Outcome("malformed", "error 400 invalid_value"),
                Outcome("plain", "lost: ReadError")]
    report = summarize(outcomes, clients=2, seconds=1.0, kills=1, latencies_ms=[1.0, 2.0, 3.0], health_failures=0)
    assert (report.sent, report.completed, report.abandoned, report.resumed) == (5, 2, 1, 1)
    assert report.lost == {"lost: ReadError": 1} and report.mismatched == 1
    assert report.failed == {"error 400 invalid_value": 1}
    assert "| **all** | 5 | 2 | 1 | 1 | **1** |" in table(report)
