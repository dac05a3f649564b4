"""Where one RAIN request's time goes at parallel_leaves 1 and K, in this process, on one device.

    python -m bench.search_profile [--device cuda --dtype bfloat16] [--k 4] [--prompts 2] [--max-tokens 8]
        [--profile/--no-profile] [--top 12] [--out FILE]

For each of the first N HH red-team prompts and each K, the paper's defaults on the transformers
engine, seeded: wall seconds, iterations, forward calls and tokens fed. With --profile, the first
prompt's requests run once more under torch.profiler: operators dispatched, kernel launches (CUDA),
the device's busy time, and the top operators by self time. It explains a K/1 latency ratio: where
every operator costs a launch (a small model on a GPU), the count of operators and launches is the
cost; where arithmetic dominates (a CPU), the tokens fed are. Profiled times carry the profiler's own
overhead: read the unprofiled wall seconds for speed.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import torch

from bench.overhead import load_prompts
from rain_core.config import EngineConfig, GenerationRequest, RainConfig, SamplingParams
from rain_core.engine import Engine

LAUNCHES = ("cudaLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernel", "cuLaunchKernelEx")


@dataclass
class Run:
    prompt: int
    k: int
    wall_s: float
    iterations: int
    forward_calls: int
    tokens_fed: int
    text: str


@dataclass
class Profile:
    k: int
    wall_s: float  # under the profiler
    operators: int  # aten operators dispatched, nested ones included
    kernel_launches: int
    device_busy_s: Optional[float]  # the kernels' own time on the GPU; None on the CPU
    top: list[dict]


def request(prompt: str, k: int, max_tokens: int, seed: int) -> GenerationRequest:
    return GenerationRequest(({"role": "user", "content": prompt},), SamplingParams(max_new_tokens=max_tokens, seed=seed),
                             RainConfig(parallel_leaves=k))


def synchronized(device: torch.device) -> float:
    """time.perf_counter() once the device's queued work has ended (a GPU call returns before its kernels do)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def timed(engine: Engine, index: int, prompt: str, k: int, max_tokens: int, seed: int) -> Run:
    started = synchronized(engine.backend.device)
    finish = engine.complete(request(prompt, k, max_tokens, seed))
    wall = synchronized(engine.backend.device) - started
    t = finish.totals
    return Run(index, k, round(wall, 3), t.iterations, t.forward_calls, t.tokens_fed, finish.text)


def profiled(engine: Engine, prompt: str, k: int, max_tokens: int, seed: int, top: int) -> Profile:
    from torch.profiler import ProfilerActivity, profile

    cuda = engine.backend.device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    started = synchronized(engine.backend.device)
    with profile(activities=activities) as prof:
        engine.complete(request(prompt, k, max_tokens, seed))
        synchronized(engine.backend.device)
    wall = time.perf_counter() - started
    averages = prof.key_averages()

    def device_us(event) -> float:  # the attribute's name moved between torch releases
        return getattr(event, "self_device_time_total", None) or getattr(event, "self_cuda_time_total", 0.0) or 0.0

    ranked = sorted(averages, key=device_us if cuda else (lambda e: e.self_cpu_time_total), reverse=True)
    return Profile(
        k, round(wall, 3),
        sum(e.count for e in averages if e.key.startswith("aten::")),
        sum(e.count for e in averages if e.key in LAUNCHES),
        round(sum(device_us(e) for e in averages) / 1e6, 3) if cuda else None,
        [{"op": e.key, "count": e.count, "self_cpu_ms": round(e.self_cpu_time_total / 1e3, 1),
          **({"self_device_ms": round(device_us(e) / 1e3, 1)} if cuda else {})} for e in ranked[:top]])


def ratios(runs: list[Run], k: int) -> dict:
    """K over 1 of each measure, the median over prompts."""
    pairs = [(a, b) for a in runs if a.k == 1 for b in runs if b.k == k and b.prompt == a.prompt]
    return {key: round(statistics.median(getattr(b, key) / getattr(a, key) for a, b in pairs), 2)
            for key in ("wall_s", "iterations", "forward_calls", "tokens_fed")} if pairs else {}


def table(runs: list[Run], profiles: list[Profile], k: int) -> str:
    lines = ["| prompt | K | wall s | iterations | forward calls | tokens fed |", "|---|---|---|---|---|---|"]
    lines += [f"| {r.prompt} | {r.k} | {r.wall_s:.2f} | {r.iterations} | {r.forward_calls} | {r.tokens_fed} |" for r in runs]
    r = ratios(runs, k)
    if r:
        lines.append(f"| **K={k} / K=1, median** | | **{r['wall_s']:.2f}** | {r['iterations']:.2f} | "
                     f"{r['forward_calls']:.2f} | {r['tokens_fed']:.2f} |")
    if profiles:
        lines += ["", "| K | profiled wall s | operators | kernel launches | device busy s |", "|---|---|---|---|---|"]
        lines += [f"| {p.k} | {p.wall_s:.2f} | {p.operators} | {p.kernel_launches} | "
                  f"{'-' if p.device_busy_s is None else f'{p.device_busy_s:.2f}'} |" for p in profiles]
        for p in profiles:
            lines += ["", f"K={p.k}, top operators by self {'device' if p.device_busy_s is not None else 'CPU'} time:",
                      "| op | count | self CPU ms | self device ms |", "|---|---|---|---|"]
            lines += [f"| {t['op'][:60]} | {t['count']} | {t['self_cpu_ms']} | {t.get('self_device_ms', '-')} |" for t in p.top]
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.search_profile", description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--k", type=int, default=4, help="the parallel_leaves compared with 1")
    p.add_argument("--prompts", type=int, default=2, help="the first N HH red-team prompts")
    p.add_argument("--max-tokens", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--profile", action=argparse.BooleanOptionalAction, default=True,
                   help="run the first prompt once more at each K under torch.profiler")
    p.add_argument("--top", type=int, default=12, help="operators listed per profile")
    p.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[1].parent / "shared" / "evaldata")
    p.add_argument("--out", type=Path, default=None, help="write the result as JSON here")
    args = p.parse_args(argv)

    engine = Engine(EngineConfig(model=args.model, device=args.device, dtype=args.dtype, threads=args.threads))
    for k in (1, args.k):  # the sentence encoder, the evaluator's fixed prompt and first-use kernels, unmeasured
        engine.complete(GenerationRequest(({"role": "user", "content": "Hi"},), SamplingParams(max_new_tokens=4),
                                          RainConfig(max_iters=2, min_iters=2, parallel_leaves=k)))
    prompts = load_prompts(args.data, args.prompts)
    runs = []
    for i, prompt in enumerate(prompts):
        for k in (1, args.k):
            runs.append(timed(engine, i, prompt, k, args.max_tokens, args.seed + i))
            print(json.dumps(asdict(runs[-1])), flush=True)
    profiles = ([profiled(engine, prompts[0], k, args.max_tokens, args.seed, args.top) for k in (1, args.k)]
                if args.profile else [])
    result = {"model": engine.model_name, "device": args.device, "dtype": args.dtype, "k": args.k,
              "max_tokens": args.max_tokens, "runs": [asdict(r) for r in runs], "ratios": ratios(runs, args.k),
              "profiles": [asdict(p) for p in profiles]}
    print(json.dumps(result, indent=1))
    print(table(runs, profiles, args.k))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
