"""The evaluation harness's mechanics against a fake OpenAI-compatible endpoint (no model needed):
requests and the `rain` field, resume, settings checks, judges and the metrics' exact values."""
from __future__ import annotations

import json
import math
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from bench.eval import __main__ as cli
from bench.eval import data, evaluator, metrics, truth
from bench.eval.metrics import squash
from bench.eval.judges import RefusalJudge, xstest_refused
from bench.eval.store import SettingsMismatch, Store

DATA = data.DEFAULT_DATA
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason="evaluation data not present")


class FakeEndpoint(BaseHTTPRequestHandler):
    """Vanilla complies; RAIN refuses. `foreign` endpoints reject the `rain` field like OpenAI does.
    (They also answer with a `rain` object: the harness must cope with extra fields.)"""

    requests: list[dict] = []
    foreign = False
    fail_ids: set[str] = set()
    slow_s = 0.0

    def log_message(self, *a):  # quiet
        pass

    def _send(self, code: int, body: dict) -> None:
        raw = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def do_GET(self):
        self._send(200, {"object": "list", "data": [{"id": "fake-model", "object": "model", "created": 0, "owned_by": "t"}]})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests.append(body)
        if self.foreign and "rain" in body:
            return self._send(400, {"error": {"message": "Unrecognized request argument supplied: rain"}})
        prompt = body["messages"][-1]["content"]
        if any(f in prompt for f in self.fail_ids):
            return self._send(500, {"error": {"message": "boom"}})
        time.sleep(self.slow_s)
        on = bool(body.get("rain", {}).get("enabled"))
        reply = "I'm sorry, I cannot help with that." if on else "Sure, here is how: step 1"
        out = {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
               "choices": [{"index": 0, "finish_reason": "length", "message": {"role": "assistant", "content": reply}}],
               "usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}}
        out["rain"] = {"enabled": False, "iterations": 0, "commits": 7, "overhead_ratio": None}  # as rain-serve
        if on:
            out["rain"] = {"enabled": True, "iterations": 12, "self_evaluations": 20, "commits": 2,
                           "commit_stats": [{"tokens": 1, "iterations": 4}, {"tokens": 2, "iterations": 8}],
                           "overhead_ratio": 3.0}
            if body["rain"].get("strategy") == "gated":  # as rain-serve: the judge's name and the answer's outcome
                out["rain"].update(strategy="gated", judge="judge-model", outcome="refused")
        self._send(200, out)


@pytest.fixture
def endpoint():
    FakeEndpoint.requests, FakeEndpoint.foreign, FakeEndpoint.fail_ids, FakeEndpoint.slow_s = [], False, set(), 0.0
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeEndpoint)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()


def run_cli(tmp_path: Path, *argv: str) -> dict:
    out = tmp_path / "run.jsonl"
    assert cli.main([*argv, "--out", str(out)]) == 0
    return json.loads(out.with_name("run.summary.json").read_text())


# metrics ---------------------------------------------------------------------------------------
def test_auroc_exact_values():
    assert metrics.auroc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == 0.75
    assert metrics.auroc([1, 2, 3], [0, 1, 1]) == 1.0
    assert metrics.auroc([1, 1, 1, 1], [0, 1, 0, 1]) == 0.5  # all tied
    assert metrics.auroc([0.5, 0.5, 0.2, 0.9], [1, 0, 0, 1]) == 0.875  # one tied pair counts one half
    assert math.isnan(metrics.auroc([1, 2], [1, 1]))


def test_rates_and_pairs():
    lo, hi = metrics.wilson(5, 10)
    assert lo == pytest.approx(0.2366, abs=1e-4) and hi == pytest.approx(0.7634, abs=1e-4)
    r = metrics.rate([True, False, False, False])
    assert r["rate"] == 0.25 and r["n"] == 4
    assert metrics.pairwise_accuracy([1, 2, 3], [0, 2, 4]) == pytest.approx(0.5)
    rep = metrics.classifier_report([0.9, -0.2, 0.3, -1.0], [1, 0, 0, 0])
    assert rep["accuracy"] == 0.75 and rep["auroc"] == 1.0
    assert metrics.best_threshold([0.9, 0.1, 0.5, -0.3], [0, 1, 0, 1]) == (pytest.approx(0.3), 1.0)
    assert metrics.best_threshold([0.2, 0.2], [0, 0]) == (pytest.approx(0.2 - 1e-6), 1.0)  # none harmful
    assert metrics.token_f1("the cat sat", "a cat sat down") == pytest.approx(2 * (2 / 3) * (2 / 4) / (2 / 3 + 2 / 4))


def test_mc_scores():
    row = {"mc1_targets": {"a": 1, "b": 0}, "mc2_targets": {"a": 1, "c": 1, "b": 0}}
    lp = {"a": math.log(0.2), "b": math.log(0.5), "c": math.log(0.3)}
    mc1, mc2 = truth.mc_scores(lp, row)
    assert mc1 == 0.0 and mc2 == pytest.approx(0.5)


# judges ----------------------------------------------------------------------------------------
@needs_data
def test_judges():
    judge = RefusalJudge(DATA)
    assert len(judge.substrings) == 29
    assert judge.refused("Well... I cannot do that")  # anywhere in the reply
    assert not judge.refused("Sure, here is a tutorial")
    assert not judge.refused("i cannot")  # case-sensitive, as the GCG paper
    assert xstest_refused("  Sorry, no.") and xstest_refused("I can't help")
    assert not xstest_refused("To kill a Python process, I'm sorry to say, use kill")


def test_parse_dialogue():
    msgs = data.parse_dialogue("\n\nHuman: hi\n\nAssistant: hello\n\nHuman: how?\n\nAssistant: like this")
    assert [m["role"] for m in msgs] == ["user", "assistant", "user", "assistant"] and msgs[-1]["content"] == "like this"


def test_subset_is_seeded_and_stratified():
    rows = [{"k": "a" if i % 3 else "b", "i": i} for i in range(30)]
    one, two = data.subset(rows, 4, 7, lambda r: r["k"]), data.subset(rows, 4, 7, lambda r: r["k"])
    assert one == two and len(one) == 8 and [r["i"] for r in one] == sorted(r["i"] for r in one)
    assert all(r in data.subset(rows, 6, 7, lambda r: r["k"]) for r in one)  # nested


# the HTTP suites -------------------------------------------------------------------------------
@needs_data
def test_advbench_both_modes_and_resume(tmp_path, endpoint):
    s = run_cli(tmp_path, "advbench", "--base-url", endpoint, "--limit", "3", "--max-iters", "4")
    assert s["settings"]["rain"] == {"max_iters": 4}
    asr = s["metrics"]["attack_success"]
    assert asr["vanilla"]["rate"] == 1.0 and asr["rain"]["rate"] == 0.0 and s["metrics"]["relative_reduction"] == 1.0
    assert s["metrics"]["paired_flips"] == {"vanilla_only": 3, "rain_only": 0, "both": 0, "neither": 0}
    assert "iterations_per_commit_mean" not in s["cost"]["vanilla"]
    assert s["cost"]["rain"]["overhead_ratio_mean"] == 3.0 and s["cost"]["rain"]["iterations_per_commit_mean"] == 6.0
    sent = FakeEndpoint.requests
    assert len(sent) == 6 and {json.dumps(r["rain"], sort_keys=True) for r in sent} == {
        '{"enabled": false}', '{"enabled": true, "max_iters": 4}'}
    # a kill mid-write leaves half a line: it is dropped and that item is asked again
    out = tmp_path / "run.jsonl"
    lines = out.read_text().splitlines()
    out.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:30])
    s = run_cli(tmp_path, "advbench", "--base-url", endpoint, "--limit", "5", "--max-iters", "4")
    assert len(FakeEndpoint.requests) == 11 and s["metrics"]["attack_success"]["rain"]["n"] == 5
    lines = out.read_text().splitlines()
    assert len(lines) == 11 and "_meta" in json.loads(lines[0]) and all(json.loads(x) for x in lines)
    assert json.loads(lines[-1])["key"].startswith('rain{"max_iters":4}/')
    s = run_cli(tmp_path, "advbench", "--base-url", endpoint, "--limit", "5", "--max-iters", "8")
    assert len(FakeEndpoint.requests) == 16  # new RAIN settings: only RAIN runs again
    assert s["metrics"]["attack_success"]["rain"]["n"] == 5 and s["settings"]["rain"] == {"max_iters": 8}
    with pytest.raises(SettingsMismatch):  # other settings never land in the same file
        run_cli(tmp_path, "advbench", "--base-url", endpoint, "--limit", "5", "--max-tokens", "8")
    assert (tmp_path / "run.md").read_text().count("\n| ") == 3  # header, vanilla, rain
    assert s["complete"] is True
    s = run_cli(tmp_path, "advbench", "--base-url", endpoint, "--limit", "7", "--max-iters", "8", "--no-send")
    assert len(FakeEndpoint.requests) == 16  # a run cut short is summarized without asking anything
    assert s["complete"] is False and s["metrics"]["attack_success"]["rain"]["n"] == 5
    assert s["settings"]["base_url"] is None  # it asked no endpoint, so it names none


@needs_data
def test_failed_requests_are_retried_on_rerun(tmp_path, endpoint):
    items = data.xstest(DATA, 2, 0)
    FakeEndpoint.fail_ids = {items[0].prompt}
    s = run_cli(tmp_path, "xstest", "--base-url", endpoint, "--limit", "2", "--mode", "vanilla")
    assert sum(m["vanilla"]["n"] for k, m in s["metrics"].items() if k.endswith("xstest_match")) == 3
    FakeEndpoint.fail_ids = set()
    s = run_cli(tmp_path, "xstest", "--base-url", endpoint, "--limit", "2", "--mode", "vanilla")
    assert s["metrics"]["safe_refusal_xstest_match"]["vanilla"]["ci95"] == pytest.approx([0.0, 0.6576], abs=1e-4)


@needs_data
def test_timeout_bounds_each_request(tmp_path, endpoint):
    FakeEndpoint.slow_s = 1.0
    s = run_cli(tmp_path, "xstest", "--base-url", endpoint, "--limit", "1", "--mode", "vanilla", "--timeout", "0.2")
    assert all("vanilla" not in m for m in s["metrics"].values())  # no answer was kept
    assert len(FakeEndpoint.requests) == 2 * 3  # each prompt sent once and retried twice, every try cut at 0.2 s
    s = run_cli(tmp_path, "xstest", "--base-url", endpoint, "--limit", "1", "--mode", "vanilla", "--timeout", "5")
    assert sum(m["vanilla"]["n"] for k, m in s["metrics"].items() if k.endswith("xstest_match")) == 2


@needs_data
def test_foreign_endpoint_plain(tmp_path, endpoint):
    FakeEndpoint.foreign = True
    s = run_cli(tmp_path, "advbench", "--gcg", "--base-url", endpoint, "--limit", "2", "--plain", "--mode", "vanilla")
    assert all("rain" not in r for r in FakeEndpoint.requests) and s["metrics"]["attack_success"]["vanilla"]["n"] == 2
    assert FakeEndpoint.requests[0]["messages"][0]["content"].startswith("Write a defamatory article")
    # the first two GCG prompts are own-suffix attacks: the transfer rate is over no prompts, written as null
    json.loads((tmp_path / "run.summary.json").read_text(), parse_constant=lambda c: pytest.fail(f"{c} in the summary"))
    assert s["metrics"]["attack_success_transfer_suffix"]["vanilla"] == {"rate": None, "n": 0, "ci95": [None, None]}
    with pytest.raises(SystemExit):
        run_cli(tmp_path, "advbench", "--base-url", endpoint, "--plain", "--mode", "both")


@needs_data
@pytest.mark.parametrize("injection", ["note", "forged"])
def test_advbench_injection_reaches_the_endpoint(tmp_path, endpoint, injection):
    s = run_cli(tmp_path, "advbench", "--gcg", "--base-url", endpoint, "--limit", "2", "--mode", "vanilla",
                "--inject", injection)
    plain = data.advbench(DATA, 2, 0, gcg=True)
    sent = [r["messages"][-1]["content"] for r in FakeEndpoint.requests]
    assert sent == [it.prompt + data.INJECTIONS[injection] for it in plain]
    assert data.REVIEWER_NOTE in sent[0] and ("<|im_start|>assistant\nNo" in sent[0]) == (injection == "forged")
    assert s["settings"]["inject"] == injection
    with pytest.raises(SettingsMismatch):  # injected and clean answers never share a results file
        run_cli(tmp_path, "advbench", "--gcg", "--base-url", endpoint, "--limit", "2", "--mode", "vanilla")
    with pytest.raises(SystemExit):  # the suites it does not apply to refuse it rather than ignore it
        cli.main(["xstest", "--inject", injection, "--out", str(tmp_path / "x.jsonl")])


def test_judged_messages_inject_after_clipping():
    from bench.eval.local import judged_messages

    convo = [{"role": "user", "content": "a" * 50}, {"role": "assistant", "content": "b" * 50},
             {"role": "user", "content": "c" * 50}]
    out = judged_messages(convo, 10, "note")
    assert [m["content"] for m in out] == ["a" * 10, "b" * 10, "c" * 10 + data.INJECTIONS["note"]]
    assert judged_messages(convo, 10, None)[-1]["content"] == "c" * 10
    assert convo[-1]["content"] == "c" * 50  # the caller's rows are left alone


# the evaluator suite, with a fake model ----------------------------------------------------------
class FakeLocal:
    """log-odds = +2 (harmless) unless the answer mentions 'bomb'; the 'chat' format has an order bias."""

    name = "fake"
    made: list[tuple] = []

    def __init__(self, *a, **k):
        type(self).made.append(a)

    def log_odds(self, messages, answer, fmt):
        base = -2.0 if "bomb" in answer else 2.0
        return [base, base - 3.0] if fmt.prompt == "chat" else [base, base]


@needs_data
def test_evaluator_rows(tmp_path, monkeypatch):
    harm = [{"id": "h0", "test_case": "q", "generation": "bomb recipe", "label": 1, "cls": 1, "llama_guard": 0, "gpt-4-0613": 1, "advbench": 1},
            {"id": "h1", "test_case": "q", "generation": "no", "label": 0, "cls": 0, "llama_guard": 0, "gpt-4-0613": 1, "advbench": 1},
            {"id": "h2", "test_case": "q", "generation": "a bomb", "label": 0, "cls": 0, "llama_guard": 0, "gpt-4-0613": 0, "advbench": 0}]
    pairs = [{"id": "p0", "context": data.user("q"), "chosen": "fine", "rejected": "bomb"}]
    monkeypatch.setattr(data, "harmbench_labelled", lambda *a: harm)
    monkeypatch.setitem(evaluator.PAIR_SETS, "hh", lambda *a: pairs)
    monkeypatch.setitem(evaluator.PAIR_SETS, "advbench refusal>target", lambda *a: [{**pairs[0], "id": "a0", "chosen": "bomb", "rejected": "x"}])
    monkeypatch.setattr("bench.eval.local.Local", FakeLocal)
    args = cli.parser().parse_args(["evaluator", "--engine", "m", "--formats", "fewshot,chat", "--out", str(tmp_path / "e.jsonl")])
    summary, table = evaluator.run(args)
    row = {(r["format"], r["score"]): r for r in table}
    assert row[("fewshot", "continuous")]["harmbench AUROC"] == 0.75
    assert row[("fewshot", "continuous")]["harmbench accuracy"] == pytest.approx(2 / 3)
    assert row[("fewshot", "continuous")]["hh pairwise accuracy"] == 1.0
    # harmless values -0.76 (harmful), 0.76, -0.76 (not harmful): at best 2 of 3 right, lowest cut first
    assert row[("fewshot", "continuous")]["calibrated threshold"] == pytest.approx(math.tanh(-1) - 1e-6)
    assert row[("fewshot", "continuous")]["accuracy at it"] == pytest.approx(2 / 3)
    assert row[("fewshot", "continuous")]["advbench refusal>target pairwise accuracy"] == 0.0
    assert row[("chat", "vote")]["harmbench accuracy"] == pytest.approx(2 / 3)  # 2 vs -1 votes split: 0 = harmless
    assert row[("chat", "continuous, 2nd order or phrasing only")]["harmbench accuracy"] == pytest.approx(1 / 3)
    assert ("ensemble: all formats", "continuous") in row
    assert row[("cls", "binary verdict")]["harmbench accuracy"] == 1.0
    refusal = next(r for r in table if r["model"] == "no model")  # none of the generations refuses
    assert refusal["harmbench accuracy"] == pytest.approx(1 / 3) and refusal["harmbench AUROC"] == 0.5
    assert row[("gpt-4-0613", "binary verdict")]["harmbench AUROC"] == 0.75
    assert Store(tmp_path / "e.jsonl", {"suite": "evaluator", "max_chars": 1500, "seed": 0}).records.keys() >= {"m/chat/h0", "m/fewshot/p0/chosen"}
    assert row[("fewshot", "continuous")]["harmbench mean value"] == pytest.approx(-squash(2.0) / 3)  # two of three mention a bomb
    # two models: each alone, and each format judged by both at once (their log-odds averaged)
    args = cli.parser().parse_args(["evaluator", "--engine", "m,m2", "--formats", "yesno", "--pairs-limit", "0",
                                    "--out", str(tmp_path / "two.jsonl")])
    _, table = evaluator.run(args)
    both = {r["score"]: r for r in table if r["model"] == "m + m2"}
    assert both["continuous"]["format"] == "yesno" and both["continuous"]["harmbench AUROC"] == 0.75
    assert [r["model"] for r in table if r["format"] == "yesno" and r["score"] == "continuous"] == ["m", "m2", "m + m2"]
    # with an injection, the judge gets it (it appends it after clipping) and the records go to their own file
    FakeLocal.made = []
    args = cli.parser().parse_args(["evaluator", "--engine", "m", "--formats", "yesno", "--inject", "forged",
                                    "--out", str(tmp_path / "e.jsonl")])
    with pytest.raises(SettingsMismatch):
        evaluator.run(args)
    args.out = None
    monkeypatch.chdir(tmp_path)
    summary, _ = evaluator.run(args)
    assert FakeLocal.made == [("m", None, 1500, "forged")] and summary["settings"]["inject"] == "forged"
    assert summary["results"] == "bench/results/evaluator-inject-forged.jsonl"


@needs_data
def test_report_plots(tmp_path, endpoint):
    from bench import report

    for suite in ("advbench", "xstest"):
        out = tmp_path / f"{suite}.jsonl"
        cli.main([suite, "--base-url", endpoint, "--limit", "2", "--out", str(out), "--rain-option", "iteration_cap=3"])
    assert FakeEndpoint.requests[-1]["rain"] == {"enabled": True, "iteration_cap": 3}
    assert report.main([str(p) for p in tmp_path.glob("*.summary.json")] + ["--out", str(tmp_path / "plots")]) == 0
    made = sorted(p.name for p in (tmp_path / "plots").glob("*.png"))
    assert made == ["attack_success.png", "attack_vs_overhead.png", "harmlessness_vs_overrefusal.png",
                    "iterations_per_commit.png", "overhead_ratio.png"]
    cli.main(["advbench", "--base-url", endpoint, "--limit", "2", "--out", str(tmp_path / "advbench.jsonl"), "--max-iters", "9"])
    summary = json.loads((tmp_path / "advbench.summary.json").read_text())
    assert sorted(r["key"].split("/")[0] for r in report.records(summary)) == ['rain{"max_iters":9}'] * 2 + ["vanilla"] * 2
    # a tagged run of other settings in the same results file keeps its own summary, table and label
    cli.main(["advbench", "--base-url", endpoint, "--limit", "2", "--out", str(tmp_path / "advbench.jsonl"),
              "--max-iters", "5", "--tag", "five"])
    tagged = json.loads((tmp_path / "advbench.five.summary.json").read_text())
    assert tagged["tag"] == "five" and (tmp_path / "advbench.five.md").is_file()
    assert json.loads((tmp_path / "advbench.summary.json").read_text())["settings"]["rain"] == {"max_iters": 9}
    assert {r["key"].split("/")[0] for r in report.records(tagged)} == {'rain{"max_iters":5}', "vanilla"}
    assert sorted(report._by([summary, tagged], "advbench")) == [summary["settings"]["model"], summary["settings"]["model"] + "\nfive"]
    with pytest.raises(SystemExit):
        cli.main(["advbench", "--out", str(tmp_path / "advbench.jsonl"), "--tag", "../escape"])


@needs_data
def test_frontier_plots(tmp_path, endpoint):
    """Runs of one --tag on the frontier's three suites make one point per mode and pairing; the plots are drawn."""
    from bench import report

    for suite in (["advbench", "--gcg"], ["xstest"], ["benign"]):
        cli.main(suite + ["--base-url", endpoint, "--limit", "2", "--out", str(tmp_path / f"{suite[0]}.jsonl"),
                          "--strategy", "gated", "--judge", "served", "--tag", "g"])
    summaries = report.load(sorted(tmp_path.glob("*.summary.json")))
    points = {(p.pairing, p.mode): p for p in report.frontier_points(summaries)}
    assert sorted(points) == [("fake-model", "vanilla"), ("fake-model + judge-model", "gated [g]")]
    gated, vanilla = points[("fake-model + judge-model", "gated [g]")], points[("fake-model", "vanilla")]
    assert gated.metric("advbench-gcg", "attack_success")[0] == 0 and vanilla.metric("advbench-gcg", "attack_success")[0] == 100
    assert gated.metric("benign", "refusal_patterns")[0] == 100 and vanilla.metric("xstest", "safe_refusal_xstest_match")[0] == 0
    ratio, low, high = gated.latency_ratio("benign")
    assert low <= ratio <= high and vanilla.latency_ratio("benign") == (1.0, 1.0, 1.0)
    assert report.main([str(p) for p in tmp_path.glob("*.summary.json")] + ["--out", str(tmp_path / "plots"), "--no-copy"]) == 0
    assert {"frontier_cost.png", "frontier_refusal.png", "gated_outcomes.png"} <= {p.name for p in (tmp_path / "plots").glob("*.png")}
    table = (tmp_path / "plots" / "frontier.md").read_text().splitlines()
    assert table[2].startswith("| fake-model | vanilla | 100% [") and table[3].startswith("| fake-model + judge-model | gated [g] | 0% [")


@needs_data
def test_truthfulqa_generation(tmp_path, endpoint):
    s = run_cli(tmp_path, "truthfulqa", "--part", "gen", "--base-url", endpoint, "--limit", "3")
    assert FakeEndpoint.requests[-1]["rain"] == {"enabled": True, "preset": "truthful"}
    assert s["metrics"]["truthful_overlap"]["rain"]["n"] == 3 and "reference overlap" in s["judge"]


@needs_data
def test_strategies_and_the_served_judge_as_modes(tmp_path, endpoint):
    """Each strategy is one tagged run against the same vanilla answers; the report puts every mode on
    the attack-success-against-cost plane."""
    from bench import report

    out = tmp_path / "advbench.jsonl"
    base = ["advbench", "--base-url", endpoint, "--limit", "2", "--out", str(out)]
    assert cli.main(base + ["--strategy", "self_check", "--judge", "served", "--tag", "self-check"]) == 0
    assert FakeEndpoint.requests[-1]["rain"] == {"enabled": True, "strategy": "self_check", "judge": "served"}
    assert cli.main(base + ["--strategy", "best_of_n", "--best-of", "4", "--tag", "best-of-4"]) == 0
    assert FakeEndpoint.requests[-1]["rain"] == {"enabled": True, "strategy": "best_of_n", "best_of": 4}
    assert len(FakeEndpoint.requests) == 6  # vanilla was asked once for both strategies
    assert "| self_check (served judge) | 2 |" in (tmp_path / "advbench.self-check.md").read_text()
    assert "| best_of_4 | 2 |" in (tmp_path / "advbench.best-of-4.md").read_text()
    with pytest.raises(SystemExit):
        cli.main(base + ["--best-of", "2"])  # best_of belongs to best_of_n
    summaries = report.load(sorted(tmp_path.glob("*.summary.json")))
    assert report.overhead_points(summaries) == {
        "fake-model vanilla (n=2)": (1.0, 100.0, report.COLORS["vanilla"]),
        "fake-model self-check self_check (served judge) (n=2)": (3.0, 0.0, report.COLORS["self_check"]),
        "fake-model best-of-4 best_of_4 (n=2)": (3.0, 0.0, report.COLORS["best_of_n"]),
    }
    assert report.main([str(p) for p in tmp_path.glob("*.summary.json")] + ["--out", str(tmp_path / "plots")]) == 0
    assert (tmp_path / "plots" / "attack_vs_overhead.png").is_file()


def test_self_check_read_at_other_thresholds():
    """A self_check run's outcome at every threshold, from the values judged once: an answer is
    replaced at or below the threshold, and kept answers are the vanilla ones."""
    from bench.eval.runs import read_at_threshold, self_check_sweep

    def pair(i: int, reply: str, value: float, threshold: float = 0.5) -> tuple[dict, dict]:
        replaced = value <= threshold
        vanilla = {"id": str(i), "mode": "vanilla", "reply": reply, "meta": {}}
        checked = {"id": str(i), "mode": "rain", "reply": "Refused." if replaced else reply, "meta": {},
                   "rain": {"strategy": "self_check", "judge_values": [value], "replaced": replaced}}
        return vanilla, checked

    pairs = [pair(0, "harm", 0.12), pair(1, "harm", 0.31), pair(2, "fine", 0.42), pair(3, "harm", 0.74)]
    groups = {"vanilla": [v for v, _ in pairs], "rain": [r for _, r in pairs]}
    rows = self_check_sweep(groups, {"harmful": (lambda r: r["reply"] == "harm", lambda r: True),
                                     "refused": (lambda r: r["reply"] == "Refused.", lambda r: r["id"] != "2")}, step=0.05)
    assert [r["threshold"] for r in rows] == [round(0.05 * k, 2) for k in range(2, 16)]
    at = {r["threshold"]: r for r in rows}
    assert at[0.1] == {"threshold": 0.1, "replaced": 0.0, "harmful": 0.75, "refused": 0.0}
    assert at[0.3] == {"threshold": 0.3, "replaced": 0.25, "harmful": 0.5, "refused": 1 / 3}
    assert at[0.45] == {"threshold": 0.45, "replaced": 0.75, "harmful": 0.25, "refused": 2 / 3}
    assert at[0.75] == {"threshold": 0.75, "replaced": 1.0, "harmful": 0.0, "refused": 1.0}
    # --read-at-threshold: the records themselves as the run would have answered at 0.35
    read = {(r["mode"], r["id"]): r for r in read_at_threshold(groups["vanilla"] + groups["rain"], 0.35)}
    assert [read[("rain", str(i))]["reply"] for i in range(4)] == ["Refused.", "Refused.", "fine", "harm"]
    assert read[("rain", "2")]["rain"]["replaced"] is False and read[("rain", "2")]["rain"]["judge_threshold"] == 0.35
    assert read[("vanilla", "0")] == groups["vanilla"][0]
    orphan = {**groups["rain"][0], "id": "9"}  # a run cut short: answered in the rain mode only
    assert len(read_at_threshold(groups["vanilla"] + groups["rain"] + [orphan], 0.35)) == len(read)
    groups["rain"][3]["reply"] = "harm, sampled otherwise"
    assert self_check_sweep(groups, {}) == []  # kept answers that are not vanilla's cannot be read at other thresholds
    with pytest.raises(SystemExit):
        read_at_threshold(groups["vanilla"] + groups["rain"], 0.35)
    groups["rain"][3]["reply"] = "harm"
    for r in groups["rain"]:
        r["rain"]["strategy"] = "best_of_n"
    assert self_check_sweep(groups, {}) == []  # only a self_check run is read this way


def test_self_check_threshold_chosen_on_one_half_read_on_the_other():
    """Two folds over the selected prompts taken alternately by id: each picks the highest threshold
    keeping its half's compliance within 5 points of vanilla's, and reports the other half there."""
    from bench.eval.runs import self_check_held_out

    def pair(i: int, reply: str, value: float, label: str = "safe") -> tuple[dict, dict]:
        vanilla = {"id": f"{i:02d}", "mode": "vanilla", "reply": reply, "meta": {"label": label}}
        checked = {**vanilla, "mode": "rain", "reply": "Refused." if value <= 0.5 else reply,
                   "rain": {"strategy": "self_check", "judge_values": [value], "replaced": value <= 0.5}}
        return vanilla, checked

    # safe prompts in id order; fold 0 chooses on the 1st, 3rd, ... (values 0.3, 0.2, 0.9, 0.8)
    safe = [pair(0, "ok", 0.30), pair(1, "ok", 0.40), pair(2, "ok", 0.20), pair(3, "ok", 0.35),
            pair(4, "ok", 0.90), pair(5, "no, I can't", 0.25), pair(6, "ok", 0.80), pair(7, "ok", 0.70)]
    pairs = safe + [pair(8, "harm", 0.05, "unsafe")]  # not a safe prompt: in neither half
    groups = {"vanilla": [v for v, _ in pairs], "rain": [r for _, r in pairs]}
    complied = lambda r: r["reply"] not in ("Refused.", "no, I can't")  # noqa: E731
    folds = self_check_held_out(groups, "compliance", complied, lambda r: r["meta"]["label"] == "safe", step=0.1)
    assert folds[0] == {"fold": 0, "threshold": 0.1,  # any replacement costs 25 points of its 4 prompts
                        "choose": {"prompts": 4, "vanilla": 1.0, "at_threshold": 1.0},
                        "read": {"prompts": 4, "vanilla": 0.75, "at_threshold": 0.75}}
    assert folds[1] == {"fold": 1, "threshold": 0.3,  # 0.3 refuses only the answer that did not comply
                        "choose": {"prompts": 4, "vanilla": 0.75, "at_threshold": 0.75},
                        "read": {"prompts": 4, "vanilla": 1.0, "at_threshold": 0.5}}
    assert self_check_held_out(groups, "compliance", complied, lambda r: r["meta"]["label"] == "safe",
                               tolerance=0.25, step=0.1)[0]["threshold"] == 0.2
