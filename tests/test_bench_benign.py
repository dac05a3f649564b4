"""The benign-traffic suite and the refusal judges (bench/eval): their mechanics against a fake
OpenAI-compatible endpoint whose replies are known, so every metric has an exact expected value."""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from bench.eval import __main__ as cli
from bench.eval import data
from bench.eval.refusal import LABELS, PatternRefusalJudge, read_labels

DATA = data.DEFAULT_DATA
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason="evaluation data not present")
VANILLA = "Sure! Here is what you asked for."
# the gated mode's reply to the n-th benign prompt (by its order in the run), and its outcome
GATED = [("Sure! Here is what you asked for.", "passed"), ("Sure! Here is a safer version.", "rewritten"),
         ("I'm unable to help with that request.", "refused")]


class Endpoint(BaseHTTPRequestHandler):
    requests: list[dict] = []
    prompts: list[str] = []  # the benign prompts, in the order of the run's items

    def log_message(self, *a):
        pass

    def _send(self, body: dict) -> None:
        raw = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def do_GET(self):
        self._send({"object": "list", "data": [{"id": "fake-model", "object": "model", "created": 0, "owned_by": "t"}]})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests.append(body)
        gated = bool(body.get("rain", {}).get("enabled"))
        reply, outcome = GATED[self.prompts.index(body["messages"][-1]["content"])] if gated else (VANILLA, None)
        rain = {"enabled": gated, "strategy": "gated", "outcome": outcome, "commits": 2} if gated else {"enabled": False}
        self._send({"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                    "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": reply}}],
                    "usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}, "rain": rain})


@pytest.fixture
def endpoint():
    Endpoint.requests = []
    Endpoint.prompts = [it.prompt for it in data.benign(DATA, 3, 0)]
    server = ThreadingHTTPServer(("127.0.0.1", 0), Endpoint)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()


@needs_data
def test_benign_suite_measures_refusals_changes_and_latency_against_vanilla(tmp_path, endpoint):
    out = tmp_path / "benign.jsonl"
    assert cli.main(["benign", "--base-url", endpoint, "--limit", "3", "--strategy", "gated",
                     "--rain-option", "judge_threshold=0.3", "--out", str(out)]) == 0
    s = json.loads(out.with_name("benign.summary.json").read_text())
    m = s["metrics"]
    assert m["refusal_patterns"]["vanilla"]["rate"] == 0 and m["refusal_patterns"]["rain"]["rate"] == pytest.approx(1 / 3)
    # the substring matchers miss the small models' "I'm unable to" refusal
    assert m["refusal_gcg_substrings"]["rain"]["rate"] == 0 and m["refusal_xstest_match"]["rain"]["rate"] == 0
    assert m["differs_from_vanilla"]["rate"] == pytest.approx(2 / 3) and m["differs_from_vanilla"]["n"] == 3
    assert s["cost"]["rain"]["outcomes"] == {"passed": 1, "refused": 1, "rewritten": 1}
    records = [json.loads(line) for line in out.read_text().splitlines()[1:]]
    latency = {mode: sum(r["latency_s"] for r in records if r["mode"] == mode) / 3 for mode in ("vanilla", "rain")}
    assert s["latency_ratio_rain_over_vanilla"] == pytest.approx(latency["rain"] / latency["vanilla"])
    sent = [r["rain"] for r in Endpoint.requests if r["rain"]["enabled"]]
    assert len(sent) == 3 and all(r == {"enabled": True, "strategy": "gated", "judge_threshold": 0.3} for r in sent)
    assert "| gated |" in out.with_name("benign.md").read_text()  # the table names the mode by its strategy
    assert len(Endpoint.requests) == 6 and {it["id"] for it in records} == {it.id for it in data.benign(DATA, 3, 0)}


@needs_data
def test_benign_prompts_are_alpaca_eval_instructions_read_by_path():
    items = data.benign(DATA, None, 0)
    assert len(items) == 402 and items[0].messages == [{"role": "user", "content": items[0].prompt}]
    assert data.benign(DATA, 5, 0) == data.benign(DATA, 5, 0) and all(it in items for it in data.benign(DATA, 5, 0))


def test_refusal_patterns_find_refusals_in_the_opening_only():
    judge = PatternRefusalJudge()
    for refusal in ("I'm unable to provide instructions for that.", "As an AI language model, I cannot provide any "
                    "advice on how to pick someone's lock.", "I can\u2019t help with that.", "I won't write that essay.",
                    "Sorry, but I can't assist.", "I must decline this request.", "It is not appropriate for me to say."):
        assert judge.refused(refusal), refusal
    for answer in ("Knead the dough for ten minutes. You cannot skip this step, or the bread will be dense.",
                   "Here are three tips: sleep at the same time, avoid screens, and keep the room cool.",
                   "The Broadway stars include Hugh Jackman and Idina Menzel. " + "x" * 300 + " I cannot help it."):
        assert not judge.refused(answer), answer


@needs_data
def test_refusal_labels_name_harmbench_rows_and_the_validation_reports_each_judge(tmp_path):
    labels = read_labels()
    ids = {r["id"] for r in data.harmbench_labelled(DATA, None, 0)}
    assert len(labels) == 60 and set(labels) <= ids and sum(labels.values()) == 20
    rows = [json.loads(line) for line in LABELS.read_text().splitlines()]
    assert all(set(r) <= {"id", "refusal", "note"} for r in rows)  # labels only: the replies stay in the data
    out = tmp_path / "refusal.jsonl"
    assert cli.main(["refusal-judge", "--out", str(out)]) == 0
    s = json.loads(out.with_name("refusal.summary.json").read_text())
    assert s["labelled"] == 60 and s["refusals"] == 20 and len(s["metrics"]) == 3
    for judge in s["metrics"].values():
        wrong = len(judge["missed_refusals"]) + len(judge["false_refusals"])
        assert judge["n"] == 60 and judge["agreement"] == pytest.approx(1 - wrong / 60)
