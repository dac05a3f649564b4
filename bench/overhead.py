"""What RAIN costs in latency against plain decoding, on a real server, per backend; and whether the server's
own `overhead_ratio` says so.

    python -m bench.overhead [--backends vllm,transformers] [--settings budget2,paper] [--limit 6] [--out FILE]

Per backend it starts rain-serve, sends each prompt once as vanilla decoding (streamed, greedy) and once per
RAIN setting (seeded), one request at a time, all on the same server, pausing after each RAIN request while
a shadow vanilla re-decode of it may run. Vanilla and RAIN are compared at equal
answer lengths: vanilla's latency is rescaled to RAIN's answer length (its time to the first token, plus its
time per later token times RAIN's later tokens). Per row it reports the measured ratio (RAIN's latency over
that), the ratio the server reported (`rain.overhead_ratio`: the request's wall time in its worker over the
worker's vanilla estimate) and their agreement (reported / measured; within 1.5x either way passes), and the
engine work each model did (`rain.engine_work_ratio`). Then medians per backend and setting.
"""
from __future__ import annotations

import argparse
import json
import shlex
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import httpx

from bench.soak import free_port, launch, stop_server

SETTINGS = {
    "paper": {},  # maxT 50, at least 15 iterations per commit, minT 6, Vt 0.8
    "budget2": {"max_iters": 2, "min_iters": 2},  # two iterations per committed set
}
AGREEMENT = 1.5  # the reported ratio must lie within this factor of the measured one
SHADOW_WAIT = 1.5  # after a RAIN request, this many times a vanilla answer of its length
MODEL = "smollm2"


@dataclass
class Timed:
    latency_s: float
    first_token_s: float
    tokens: int
    rain: dict  # the response's `rain` summary


@dataclass
class Row:
    backend: str
    setting: str
    prompt: int
    vanilla_s: float
    vanilla_tokens: int
    rain_s: float
    rain_tokens: int
    vanilla_at_rain_length_s: float
    measured_ratio: float
    reported_ratio: Optional[float]
    agreement: Optional[float]  # reported / measured
    engine_work: dict  # tokens each model computed / (prompt + completion), as the server reports it
    iterations: int


def load_prompts(data: Path, limit: int) -> list[str]:
    lines = (data / "hh-rlhf" / "red_team_prompts.jsonl").read_text().splitlines()
    return [json.loads(line)["prompt"] for line in lines[:limit]]


def timed_stream(client: httpx.Client, payload: dict) -> Timed:
    """One streamed chat completion: its latency, time to the first token, tokens and `rain` summary."""
    started = time.perf_counter()
    first, summary, tokens = None, {}, 0
    with client.stream("POST", "/v1/chat/completions", json={**payload, "stream": True,
                                                             "stream_options": {"include_usage": True}}) as response:
        if response.status_code != 200:
            raise RuntimeError(f"{response.status_code}: {response.read()[:300]!r}")
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[len("data: "):])
            if "error" in chunk:
                raise RuntimeError(f"in-band error: {chunk['error']}")
            for choice in chunk.get("choices") or ():
                if first is None and (choice.get("delta") or {}).get("content"):
                    first = time.perf_counter() - started
            rain = chunk.get("rain") or {}
            summary = rain.get("summary", summary) if "summary" in rain else (rain if "overhead_ratio" in rain else summary)
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    latency = time.perf_counter() - started
    return Timed(latency, first if first is not None else latency, tokens, summary)


def at_length(vanilla: Timed, tokens: int) -> float:
    """Vanilla's latency rescaled to an answer of `tokens` tokens."""
    per_later_token = (vanilla.latency_s - vanilla.first_token_s) / max(vanilla.tokens - 1, 1)
    return vanilla.first_token_s + max(tokens - 1, 0) * per_later_token


def measure(client: httpx.Client, backend: str, setting: str, index: int, prompt: str, args) -> Row:
    messages = [{"role": "user", "content": prompt}]
    base = {"model": MODEL, "messages": messages, "max_tokens": args.max_tokens, "cache_salt": f"{backend}-{setting}-{index}"}
    vanilla = timed_stream(client, {**base, "temperature": 0.0, "rain": {"enabled": False}})
    rain = timed_stream(client, {**base, "seed": args.seed, "rain": {**SETTINGS[setting]}})
    vanilla_equal = at_length(vanilla, rain.tokens)
    # The server may re-decode the RAIN request with vanilla decoding as it ends (--shadow-vanilla-rate); on the
    # transformers backend that shadow would take turns with the next prompt's vanilla request, which must run alone.
    time.sleep(SHADOW_WAIT * vanilla_equal)
    measured = rain.latency_s / vanilla_equal
    reported = rain.rain.get("overhead_ratio")
    return Row(backend, setting, index, vanilla.latency_s, vanilla.tokens, rain.latency_s, rain.tokens, vanilla_equal,
               measured, reported, None if reported is None else reported / measured,
               rain.rain.get("engine_work_ratio") or {}, rain.rain.get("iterations", 0))


def summarize(rows: list[Row]) -> dict:
    summary = {}
    for key in dict.fromkeys((r.backend, r.setting) for r in rows):
        mine = [r for r in rows if (r.backend, r.setting) == key]
        agreements = [r.agreement for r in mine if r.agreement is not None]
        summary["/".join(key)] = {
            "measured_ratio": statistics.median(r.measured_ratio for r in mine),
            "reported_ratio": statistics.median(r.reported_ratio for r in mine if r.reported_ratio is not None)
            if agreements else None,
            "agreement": statistics.median(agreements) if agreements else None,
            "rows_within_agreement": sum(1 / AGREEMENT <= a <= AGREEMENT for a in agreements),
            "rows": len(mine),
            "rain_s": statistics.median(r.rain_s for r in mine),
            "vanilla_s": statistics.median(r.vanilla_s for r in mine),
        }
    return summary


def table(rows: list[Row], summary: dict) -> str:
    head = ("| backend | setting | prompt | vanilla s (tokens) | RAIN s (tokens) | measured | reported | reported/measured "
            "| engine work | iters |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        work = ", ".join(f"{m}: {w:.1f}x" for m, w in r.engine_work.items())
        lines.append(f"| {r.backend} | {r.setting} | {r.prompt} | {r.vanilla_s:.2f} ({r.vanilla_tokens}) | "
                     f"{r.rain_s:.2f} ({r.rain_tokens}) | {r.measured_ratio:.1f}x | {_x(r.reported_ratio)} | "
                     f"{_f(r.agreement)} | {work} | {r.iterations} |")
    for key, s in summary.items():
        lines.append(f"| **{key} median** | | | {s['vanilla_s']:.2f} | {s['rain_s']:.2f} | **{s['measured_ratio']:.1f}x** | "
                     f"{_x(s['reported_ratio'])} | {_f(s['agreement'])} ({s['rows_within_agreement']}/{s['rows']} within "
                     f"{AGREEMENT}x) | | |")
    return "\n".join(lines)


def _x(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.1f}x"


def _f(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.2f}"


def run_backend(backend: str, args, prompts: list[str], log_dir: Path) -> list[Row]:
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    argv = [sys.executable, "-m", "server.cli", "--host", "127.0.0.1", "--port", str(port), "--backend", backend,
            "--threads", str(args.threads), "--default-mode", "rain", *shlex.split(args.server_flags)]
    server = launch(argv, base_url, log_dir / f"rain-serve-{backend}.log")
    rows = []
    try:
        with httpx.Client(base_url=base_url, timeout=args.request_timeout) as client:
            timed_stream(client, {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4,
                                  "seed": 0, "rain": SETTINGS["budget2"]})  # loads the encoder and the judge's prefix
            for setting in args.settings.split(","):
                for i, prompt in enumerate(prompts):
                    rows.append(measure(client, backend, setting, i, prompt, args))
                    print(json.dumps(asdict(rows[-1])), flush=True)
    finally:
        stop_server(server)
    return rows


def interrupted(signum, frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.overhead", description=__doc__.splitlines()[0])
    p.add_argument("--backends", default="vllm,transformers")
    p.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[1].parent / "shared" / "evaldata")
    p.add_argument("--settings", default="budget2,paper", help=f"comma-separated, from {sorted(SETTINGS)}")
    p.add_argument("--limit", type=int, default=6)
    p.add_argument("--max-tokens", type=int, default=48)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--request-timeout", type=float, default=3600)
    p.add_argument("--server-flags", default="", help="more rain-serve flags, e.g. '--judge-model qwen2.5-coder-0.5b'")
    p.add_argument("--out", type=Path, default=None, help="write the rows and medians as JSON here")
    args = p.parse_args(argv)

    signal.signal(signal.SIGTERM, interrupted)  # as Ctrl-C: run_backend's finally stops its server
    prompts = load_prompts(args.data, args.limit)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="rain-overhead-") as scratch:
        for backend in args.backends.split(","):
            rows += run_backend(backend, args, prompts, Path(scratch))
    summary = summarize(rows)
    result = {"model": MODEL, "max_tokens": args.max_tokens, "threads": args.threads, "date": time.strftime("%Y-%m-%d"),
              "command": "python -m bench.overhead " + " ".join(sys.argv[1:] if argv is None else argv),
              "rows": [asdict(r) for r in rows], "median": summary}
    print(json.dumps({"median": summary}, indent=1))
    print(table(rows, summary))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
