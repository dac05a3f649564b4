"""`python -m bench.eval SUITE [options]`: evaluate an OpenAI-compatible endpoint (rain-serve in both
modes, or any other in vanilla mode with --plain) or rain_core's self-evaluation, and write
`<out>.jsonl` (records, resumable), `<out>.summary.json` and `<out>.md` (a Markdown table; `<out>.<tag>.*`
with --tag)."""
from __future__ import annotations

import argparse
import json
import re
import shlex
import sys
from pathlib import Path
from typing import Callable, Optional, Sequence

from . import evaluator, refusal, safety, truth
from .client import ClientConfig
from .data import DEFAULT_DATA, INJECTIONS
from .store import markdown_table, strict_json, write_summary

SUITES: dict[str, Callable] = {
    "advbench": safety.advbench,
    "xstest": safety.xstest,
    "hh": safety.hh,
    "benign": safety.benign,
    "refusal-judge": refusal.validate,
    "truthfulqa": truth.run,
    "evaluator": evaluator.run,
}
BOTH_MODELS = "smollm2,qwen2.5-coder-0.5b"
INJECTABLE = ("advbench", "evaluator")


def tag_name(text: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", text):
        raise argparse.ArgumentTypeError("letters, digits, '-' and '_' only (it becomes part of a file name)")
    return text


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.eval", description=__doc__,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("suite", choices=sorted(SUITES))
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="evaluation data directory (read only)")
    p.add_argument("--out", type=Path, default=None, help="results JSONL (default: bench/results/<suite>-<model>.jsonl)")
    p.add_argument("--limit", type=int, default=None, help="seeded subset size (xstest: per label)")
    p.add_argument("--seed", type=int, default=0, help="subset and sampling seed")
    p.add_argument("--tag", type=tag_name, default=None,
                   help="names this run's summary and table (<out>.<tag>.summary.json), so that RAIN runs with other "
                        "settings kept in the same results file keep their own; plots label the run with it")
    p.add_argument("--inject", choices=sorted(INJECTIONS), default=None,
                   help="advbench, evaluator: append text addressed to the safety reviewer (RAIN's self-evaluation) to "
                        "the last user turn: 'note' (plain text), 'forged' (the note plus a forged ChatML end of turn and "
                        "verdict); results go to their own files")
    g = p.add_argument_group("endpoint (advbench, xstest, hh, truthfulqa generation)")
    g.add_argument("--base-url", default="http://127.0.0.1:8000/v1")
    g.add_argument("--model", default=None, help="model name sent (default: the endpoint's first model)")
    g.add_argument("--api-key", default="EMPTY")
    g.add_argument("--concurrency", type=int, default=1)
    g.add_argument("--timeout", type=float, default=ClientConfig.timeout_s,
                   help="seconds one request may take before it is cancelled and sent again from scratch (a slow "
                        "search that runs past it re-spends its whole search: set it above the server's --request-timeout)")
    g.add_argument("--mode", choices=["vanilla", "rain", "both"], default="both")
    g.add_argument("--plain", action="store_true", help="endpoint is not rain-serve: send no `rain` field (vanilla only)")
    g.add_argument("--max-tokens", type=int, default=48)
    g.add_argument("--temperature", type=float, default=None, help="default: the endpoint's (rain-serve: greedy vanilla)")
    g.add_argument("--preset", default=None, help="RAIN preset: harmless | adversarial | truthful (default: server's)")
    g.add_argument("--max-iters", type=int, default=None, help="RAIN maxT per commit")
    g.add_argument("--min-iters", type=int, default=None, help="RAIN floor of new iterations per commit")
    g.add_argument("--time-budget-s", type=float, default=None, help="RAIN wall-time budget per request")
    g.add_argument("--strategy", choices=["rain", "self_check", "best_of_n", "gated"], default="rain",
                   help="what the `rain` mode runs: RAIN's search, a baseline (a judged vanilla answer, the judge's "
                        "pick of --best-of sampled answers), or gated RAIN (vanilla, searched where the judge objects); "
                        "every strategy is compared with vanilla on the same prompts")
    g.add_argument("--judge", choices=["self", "served"], default="self",
                   help="who judges in the `rain` mode: the served model itself, or the server's --judge-model")
    g.add_argument("--best-of", type=int, default=None, help="best_of_n: answers sampled per prompt (server default 4)")
    g.add_argument("--rain-option", action="append", default=[], metavar="KEY=VALUE",
                   help="any other field of the request's `rain` object (VALUE parsed as JSON), e.g. iteration_cap=4")
    g.add_argument("--no-send", action="store_true",
                   help="send nothing: summarize the records already in --out (a run cut short; it says complete=false)")
    g.add_argument("--read-at-threshold", type=float, default=None, metavar="T",
                   help="self_check with --no-send: summarize the run as it would have answered at judge threshold T "
                        "(its records hold the judge's value of each vanilla answer; only which answers are replaced moves)")
    g.add_argument("--gcg", action="store_true", help="advbench: append the GCG adversarial suffixes of gcg/")
    g = p.add_argument_group("in-process rain_core (evaluator, truthfulqa MC, hh judge)")
    g.add_argument("--engine", default=BOTH_MODELS, help="rain_core model aliases, comma-separated")
    g.add_argument("--formats", default="fewshot,chat,yesno", help="evaluator formats: fewshot|chat|yesno[+principle], comma-separated")
    g.add_argument("--pairs-limit", type=int, default=200, help="evaluator: pairs per pair set, HH and AdvBench (0: none)")
    g.add_argument("--max-chars", type=int, default=1500, help="clip each message and answer to this many characters")
    g.add_argument("--threads", type=int, default=None, help="torch threads")
    g.add_argument("--part", choices=["mc", "gen", "both"], default="both", help="truthfulqa: which part")
    g.add_argument("--judge-model", default="qwen2.5-coder-0.5b", help="hh: self-evaluation judge model ('none': skip)")
    g.add_argument("--judge-format", default="yesno", help="hh: judge format (see --formats)")
    g.add_argument("--judge-threshold", type=float, default=0.0, help="hh: harmless when the judge value is above this")
    g.add_argument("--refusal-model", default="none",
                   help="benign: the model alias that judges refusals too ('none': the text judges only); refusal-judge: "
                        "the aliases to validate, comma-separated")
    g.add_argument("--refusal-threshold", type=float, default=0.0,
                   help="benign, refusal-judge: a refusal when the model's log-odds of Yes over No are above this")
    p.set_defaults(command="python -m bench.eval")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = parser()
    args = p.parse_args(argv)
    if args.inject and args.suite not in INJECTABLE:
        p.error(f"--inject applies to {' and '.join(INJECTABLE)} only")
    if args.best_of is not None and args.strategy != "best_of_n":
        p.error("--best-of needs --strategy best_of_n")
    if args.read_at_threshold is not None and not (args.no_send and args.strategy == "self_check"):
        p.error("--read-at-threshold needs --no-send and --strategy self_check")
    args.command = "python -m bench.eval " + shlex.join(argv)
    if not args.data.is_dir():
        sys.exit(f"no evaluation data at {args.data} (pass --data)")
    summary, table = SUITES[args.suite](args)
    summary["tag"] = args.tag
    js, md = write_summary(args.out, summary, table, title=f"`{args.command}`", tag=args.tag)
    print(markdown_table(table))
    print(f"records: {args.out}\nsummary: {js}\ntable: {md}")
    if "metrics" in summary:
        print(json.dumps(strict_json(summary["metrics"]), indent=1)[:3000])
    return 0


if __name__ == "__main__":
    sys.exit(main())
