"""What RAIN costs against plain KV-cached decoding, measured in one process on the same prompts.

    python -m bench.overhead [--model smollm2] [--settings budget2,paper] [--limit 6] [--out FILE]

Per prompt and setting: wall seconds, forward calls, tokens fed to the model, committed tokens and
search iterations of RAIN and of vanilla greedy decoding, and the RAIN/vanilla time ratio; then
medians, and the cost of one search iteration in machine-independent units: tokens fed per
iteration, and wall time per iteration over vanilla's time per token in the same run.
"""
from __future__ import annotations

import argparse
import json
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path

from rain_core.config import EngineConfig, GenerationRequest, RainConfig, SamplingParams
from rain_core.engine import Engine

SETTINGS = {
    "paper": RainConfig(),  # maxT 50, at least 15 iterations per commit, minT 6, Vt 0.8
    "budget2": RainConfig(max_iters=2, min_iters=2),  # the budget the reference code could be timed at
}


@dataclass
class Row:
    prompt: int
    setting: str
    vanilla_s: float
    rain_s: float
    ratio: float
    vanilla_forward_calls: int
    rain_forward_calls: int
    vanilla_tokens_fed: int
    rain_tokens_fed: int
    vanilla_tokens: int
    rain_tokens: int
    iterations: int
    tokens_fed_per_iteration: float
    vanilla_token_times_per_iteration: float


def load_prompts(data: Path, limit: int) -> list[str]:
    lines = (data / "hh-rlhf" / "red_team_prompts.jsonl").read_text().splitlines()
    return [json.loads(line)["prompt"] for line in lines[:limit]]


def measure(engine: Engine, prompt: str, setting: str, max_tokens: int, seed: int, index: int) -> Row:
    messages = ({"role": "user", "content": prompt},)
    vanilla = engine.complete(GenerationRequest(messages, SamplingParams(max_new_tokens=max_tokens))).totals
    rain = engine.complete(GenerationRequest(messages, SamplingParams(max_new_tokens=max_tokens, seed=seed), SETTINGS[setting])).totals
    per_token = vanilla.wall_s / max(vanilla.completion_tokens, 1)
    iterations = max(rain.iterations, 1)
    return Row(
        index, setting, vanilla.wall_s, rain.wall_s, rain.wall_s / vanilla.wall_s,
        vanilla.forward_calls, rain.forward_calls, vanilla.tokens_fed, rain.tokens_fed,
        vanilla.completion_tokens, rain.completion_tokens, rain.iterations,
        rain.tokens_fed / iterations, rain.wall_s / iterations / per_token,
    )


def summarize(rows: list[Row]) -> dict:
    summary = {}
    for setting in dict.fromkeys(r.setting for r in rows):
        mine = [r for r in rows if r.setting == setting]
        summary[setting] = {
            key: statistics.median(getattr(r, key) for r in mine)
            for key in ("ratio", "rain_s", "vanilla_s", "iterations", "tokens_fed_per_iteration",
                        "vanilla_token_times_per_iteration")
        }
    return summary


def table(rows: list[Row], summary: dict) -> str:
    head = "| setting | prompt | vanilla s | RAIN s | ratio | fwd calls V/R | tokens fed V/R | tokens V/R | iters | fed/iter | vtt/iter |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        lines.append(
            f"| {r.setting} | {r.prompt} | {r.vanilla_s:.2f} | {r.rain_s:.2f} | {r.ratio:.1f}x | "
            f"{r.vanilla_forward_calls}/{r.rain_forward_calls} | {r.vanilla_tokens_fed}/{r.rain_tokens_fed} | "
            f"{r.vanilla_tokens}/{r.rain_tokens} | {r.iterations} | {r.tokens_fed_per_iteration:.0f} | "
            f"{r.vanilla_token_times_per_iteration:.1f} |"
        )
    for setting, s in summary.items():
        lines.append(
            f"| **{setting} median** | | {s['vanilla_s']:.2f} | {s['rain_s']:.2f} | **{s['ratio']:.1f}x** | | | | "
            f"{s['iterations']:.0f} | {s['tokens_fed_per_iteration']:.0f} | {s['vanilla_token_times_per_iteration']:.1f} |"
        )
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.overhead", description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2")
    p.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[1].parent / "shared" / "evaldata")
    p.add_argument("--settings", default="budget2,paper", help=f"comma-separated, from {sorted(SETTINGS)}")
    p.add_argument("--limit", type=int, default=6)
    p.add_argument("--max-tokens", type=int, default=48)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="write the rows and medians as JSON here")
    args = p.parse_args(argv)

    engine = Engine(EngineConfig(model=args.model, threads=args.threads))
    warmup = GenerationRequest(({"role": "user", "content": "Hi"},), SamplingParams(max_new_tokens=4), SETTINGS["budget2"])
    engine.complete(warmup)  # loads the sentence encoder and feeds the evaluator's fixed prompt once
    prompts = load_prompts(args.data, args.limit)
    rows = []
    for setting in args.settings.split(","):
        for i, prompt in enumerate(prompts):
            rows.append(measure(engine, prompt, setting, args.max_tokens, args.seed, i))
            print(json.dumps(asdict(rows[-1])), flush=True)
    summary = summarize(rows)
    result = {"model": engine.model_name, "max_tokens": args.max_tokens, "threads": args.threads,
              "rows": [asdict(r) for r in rows], "median": summary}
    print(json.dumps({"median": summary}, indent=1))
    print(table(rows, summary))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
