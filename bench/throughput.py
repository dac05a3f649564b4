"""Throughput of real servers under 1 to 16 concurrent streaming clients, and what one engine step costs.

    python -m bench.throughput [--backends transformers,vllm] [--modes vanilla,budget2,paper_pl1,paper_pl4]
        [--clients 1,2,4,8,16] [--requests-per-client 4] [--max-tokens 32] [--peer/--no-peer]
        [--step-rows 1,8,16,64] [--device cuda --dtype bfloat16] [--server-flags '...'] [--out FILE]

`--modes budget2_served` is budget 2 judged by a --judge-model, which `--server-flags` loads.

For each backend it starts `rain-serve --backend NAME` on a free loopback port (one worker, as many
running requests as the most clients), and for each mode and clients level K runs K clients, each
sending its requests back to back, streamed (SSE), with the HH red-team prompts of ../shared/evaldata.
Each level sends its own `cache_salt` (vLLM's extension), after one unmeasured short request under it:
the levels reuse the same prompts and seeds, so no level reads prompt states another level cached.
Per level: completion tokens over the level's wall time (all clients), time to first token p50,
latency p50/p95, requests ok/failed. A backend whose server does not start is recorded as
unavailable with the reason (the transformers backend falls back to a server without --backend
when the flag is unknown: it is the only engine such a server has); a mode whose every request is
refused with a 400 (`parallel_leaves` where the server does not know it) is recorded as unavailable.

With --peer it also starts vLLM's own OpenAI server on the same weights (the de-quantised model
that rain_core writes into its cache, and its tokenizer) and measures it with the same client in
the vanilla mode. The step cost: for transformers, one forward of R rows, one new token each on
top of a short cached prompt, through rain_core's ModelRunner and TreeLayout (how RAIN's search
feeds branches side by side), in this process, on the servers' `--device` and `--dtype`; for vLLM, one
/v1/completions request of R copies of a short prompt with max_tokens=1 through the peer (so it includes
HTTP and scheduling).

Every server this process starts runs in its own process group and is stopped on exit, Ctrl-C or
an exception.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import httpx

from bench.overhead import load_prompts
from bench.soak import ServerFailed, free_port, launch, percentile, stop_server

MODEL = "smollm2"
# What each mode adds to a request; None: vanilla. The paper's defaults are RainConfig's
# (maxT 50, at least 15 iterations per commit, minT 6, Vt 0.8).
MODES = {
    "vanilla": None,
    "budget2": {"max_iters": 2, "min_iters": 2},
    # judged by the --judge-model (pass it in --server-flags; a server without one refuses these with a 400)
    "budget2_served": {"max_iters": 2, "min_iters": 2, "judge": "served"},
    "paper_pl1": {"parallel_leaves": 1},
    "paper_pl4": {"parallel_leaves": 4},
    "paper_pl8": {"parallel_leaves": 8},
}
BACKENDS = ("transformers", "vllm")
START_TIMEOUT_S = 300
PEER_START_TIMEOUT_S = 600  # vLLM's first start took about 60 s on the 2-core machine
STEP_REPEATS = 5
DECODE_STEPS = 8  # the extra tokens that time one vLLM decode step


@dataclass
class Sample:
    """One streamed request, as a client saw it."""

    ok: bool
    latency_s: float
    ttft_s: Optional[float] = None  # to the first chunk with text
    completion_tokens: int = 0
    status: int = 200
    error: Optional[str] = None


@dataclass
class Level:
    server: str  # "rain-serve/transformers" or "vllm-peer"
    mode: str
    clients: int
    requests: int
    ok: int
    failed: int
    wall_s: float
    completion_tokens: int
    tokens_per_s: float
    ttft_p50_s: Optional[float]
    latency_p50_s: Optional[float]
    latency_p95_s: Optional[float]
    failures: dict[str, int] = field(default_factory=dict)


# one request -------------------------------------------------------------------------------------
def body(prompt: str, mode: str, max_tokens: int, seed: int, salt: str) -> dict:
    rain = MODES[mode]
    b = {"model": MODEL, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
         "stream": True, "stream_options": {"include_usage": True}, "cache_salt": salt}
    if rain is None:
        return {**b, "temperature": 0.0, "rain": {"enabled": False}}  # greedy on both servers; vLLM ignores `rain`
    return {**b, "seed": seed, "rain": rain}  # no temperature: under RAIN it would set the candidates'


def error_text(status: int, raw: bytes) -> str:
    try:
        error = json.loads(raw)["error"]
        return f"{status} {error.get('code') or error.get('type')}: {str(error.get('message'))[:160]}"
    except (ValueError, KeyError, TypeError, AttributeError):
        return f"{status}: {raw[:160].decode(errors='replace')}"


def stream_one(client: httpx.Client, payload: dict) -> Sample:
    started = time.perf_counter()
    try:
        with client.stream("POST", "/v1/chat/completions", json=payload) as response:
            if response.status_code != 200:
                return Sample(False, time.perf_counter() - started, status=response.status_code,
                              error=error_text(response.status_code, response.read()))
            ttft, tokens, finished, done = None, 0, False, False
            for line in response.iter_lines():
                if not line.startswith("data: "):
                    continue
                data = line[len("data: "):]
                if data == "[DONE]":
                    done = True
                    break
                chunk = json.loads(data)
                if "error" in chunk:
                    return Sample(False, time.perf_counter() - started, ttft,
                                  error=f"in-band {chunk['error'].get('type')}: {str(chunk['error'].get('message'))[:160]}")
                for choice in chunk.get("choices") or ():
                    if ttft is None and (choice.get("delta") or {}).get("content"):
                        ttft = time.perf_counter() - started
                    finished = finished or choice.get("finish_reason") is not None
                if chunk.get("usage"):
                    tokens = chunk["usage"]["completion_tokens"]
    except (httpx.HTTPError, ValueError) as exc:
        return Sample(False, time.perf_counter() - started, status=0, error=f"{type(exc).__name__}: {exc}"[:200])
    latency = time.perf_counter() - started
    if not (done and finished):
        return Sample(False, latency, ttft, tokens, error="stream ended without a finish and [DONE]")
    return Sample(True, latency, ttft, tokens)


# one level: K clients back to back ----------------------------------------------------------------
def level_stats(server: str, mode: str, clients: int, samples: list[Sample], wall_s: float) -> Level:
    good = [s for s in samples if s.ok]
    tokens = sum(s.completion_tokens for s in good)
    ttfts = [s.ttft_s for s in good if s.ttft_s is not None]
    latencies = [s.latency_s for s in good]

    def pct(values, q):
        return round(percentile(values, q), 3) if values else None

    failures = Counter(s.error for s in samples if not s.ok)
    return Level(server, mode, clients, len(samples), len(good), len(samples) - len(good), round(wall_s, 3), tokens,
                 round(tokens / wall_s, 2) if wall_s > 0 else 0.0, pct(ttfts, 50), pct(latencies, 50),
                 pct(latencies, 95), dict(failures))


def level_salt(server: str, mode: str, clients: int) -> str:
    """Every level reads only prefix-cache blocks it wrote itself (after its warm-up): the levels reuse the same
    prompts and seeds, so without it a later mode or level would find an earlier one's prompt states cached."""
    return f"{server}:{mode}:{clients}".replace("/", "-")  # vLLM refuses '/' in a salt


def warm_up(base_url: str, mode: str, salt: str) -> None:
    """One short unmeasured request first, so that nothing a first request pays for is measured: on a GPU the
    first search loads kernels and grows the allocator's pool; under a new salt the chat template's and the
    judge's shared prefixes are computed once, as on a server that has run for a while."""
    with httpx.Client(base_url=base_url, timeout=300) as client:
        stream_one(client, body("Hello", mode, 2, 0, salt))


def run_level(base_url: str, server: str, mode: str, clients: int, per_client: int, prompts: list[str],
              max_tokens: int, timeout_s: float) -> Level:
    salt = level_salt(server, mode, clients)
    warm_up(base_url, mode, salt)
    samples: list[Sample] = []
    lock = threading.Lock()
    go = threading.Barrier(clients + 1)

    def client_loop(i: int) -> None:
        with httpx.Client(base_url=base_url, timeout=timeout_s) as client:
            go.wait()
            for j in range(per_client):
                n = i * per_client + j
                sample = stream_one(client, body(prompts[n % len(prompts)], mode, max_tokens, n, salt))
                with lock:
                    samples.append(sample)

    threads = [threading.Thread(target=client_loop, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    go.wait()
    started = time.perf_counter()
    for t in threads:
        t.join()
    return level_stats(server, mode, clients, samples, time.perf_counter() - started)


def refused(level: Level) -> Optional[str]:
    """Why a mode is unavailable: every request refused with a 400 (the server does not know a field)."""
    if level.ok == 0 and level.failures and all(e.startswith("400") for e in level.failures):
        return next(iter(level.failures))
    return None


def run_modes(base_url: str, server: str, modes: list[str], levels: list[int], args, prompts, result) -> None:
    for mode in modes:
        for clients in levels:
            level = run_level(base_url, server, mode, clients, args.requests_per_client, prompts, args.max_tokens,
                              args.request_timeout)
            print(json.dumps(asdict(level)), flush=True)
            if (why := refused(level)) is not None:
                result["unavailable"].append({"server": server, "mode": mode, "reason": why})
                print(f"{server} {mode}: unavailable ({why})", flush=True)
                break
            result["levels"].append(asdict(level))


# servers -------------------------------------------------------------------------------------------
def rain_serve_argv(backend: Optional[str], port: int, args) -> list[str]:
    flags = ["--host", "127.0.0.1", "--port", str(port), "--workers", "1", "--threads", str(args.threads),
             "--device", args.device, "--dtype", args.dtype, "--max-running-per-worker", str(max(args.clients)),
             "--max-queue", "256", "--request-timeout", str(int(args.request_timeout))]
    if backend is not None:
        flags += ["--backend", backend]
    return [sys.executable, "-m", "server.cli", *flags, *shlex.split(args.server_flags)]


def start_rain_serve(backend: str, args, log_dir: Path, running: list) -> tuple[str, list[str], Optional[str]]:
    """(base_url, the command, a note) of a healthy server; ServerFailed when it does not start."""
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    argv = rain_serve_argv(backend, port, args)
    log = log_dir / f"rain-serve-{backend}.log"
    try:
        running.append(launch(argv, base_url, log, START_TIMEOUT_S))
        return base_url, argv, None
    except ServerFailed as exc:
        if backend != "transformers" or "unrecognized arguments: --backend" not in str(exc):
            raise
    argv = rain_serve_argv(None, port, args)  # a server from before --backend: transformers is all it has
    running.append(launch(argv, base_url, log, START_TIMEOUT_S))
    return base_url, argv, "this rain-serve has no --backend flag; started without it (its only engine is transformers)"


def peer_model_dirs(model: str, scratch: Path) -> tuple[str, Optional[str]]:
    """(weights, tokenizer) directories vLLM can read: a GGUF's de-quantised weights in rain_core's cache,
    and its tokenizer saved beside this run (the cache's weights directory has none); a plain model
    directory or HF id serves as both."""
    from rain_core.models import load_tokenizer, resolve, weights_dir

    source = resolve(model)
    weights = weights_dir(source)  # converts the GGUF once, as a rain-serve start does
    if weights is None:
        raise ServerFailed(f"rain_core could not keep the de-quantised weights of {source.gguf_file} in its cache")
    if not source.gguf_file:
        return weights, None
    tokenizer = scratch / "peer-tokenizer"
    load_tokenizer(source).save_pretrained(tokenizer)
    return weights, str(tokenizer)


def peer_argv(weights: str, tokenizer: Optional[str], port: int, dtype: str) -> list[str]:
    argv = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", weights,
            "--served-model-name", MODEL, "--host", "127.0.0.1", "--port", str(port), "--dtype", dtype,
            "--max-model-len", "2048"]
    return argv + (["--tokenizer", tokenizer] if tokenizer else [])


# step cost -----------------------------------------------------------------------------------------
def step_cost_transformers(model: str, threads: int, device: str, dtype: str, rows: list[int], prompt: str) -> dict:
    import torch

    from bench.search_profile import synchronized
    from rain_core.models import load_model, load_tokenizer, resolve
    from rain_core.backends.transformers.runner import ModelRunner, TreeLayout

    torch.set_num_threads(threads)
    source = resolve(model)
    tokenizer = load_tokenizer(source)
    runner = ModelRunner(load_model(source, device, dtype), torch.device(device))

    prompt_ids = tokenizer(prompt)["input_ids"]
    cache = runner.new_cache()
    runner.forward(cache, torch.tensor(prompt_ids))
    keep = runner.cache_length(cache)
    if keep != len(prompt_ids):  # a transformers that ignores the cache argument would time full recomputes
        raise RuntimeError(f"the cache holds {keep} entries after a {len(prompt_ids)}-token prefill")
    layout = TreeLayout.shared_prefix(keep, runner.device)
    g = torch.Generator().manual_seed(0)
    ms = {}
    for r in rows:
        ids = torch.randint(0, runner.vocab_size, (r,), generator=g)
        times = []
        for _ in range(STEP_REPEATS + 1):  # the first is a warm-up
            position_ids, mask = layout.append(list(range(r)), [keep] * r)  # R branches, one token each
            started = synchronized(runner.device)
            runner.forward(cache, ids, position_ids, mask, torch.arange(r))
            times.append(synchronized(runner.device) - started)
            runner.truncate(cache, keep)
            layout.truncate(keep)
        ms[r] = 1000 * statistics.median(times[1:])
    return {"engine": "transformers", "threads": threads, "device": device, "dtype": dtype, "prompt_tokens": keep,
            "method": "rain_core ModelRunner.forward of R rows (one new token each, R TreeLayout branches) on a "
                      f"cached {keep}-token prompt, in the bench process, median of {STEP_REPEATS} after a warm-up; "
                      "it is one decode step, so 'ms' and 'decode ms' are the same",
            "rows": {r: {**v, **d} for (r, v), d in zip(ratios(ms).items(), ratios(ms, "decode_").values())}}


def step_cost_vllm(base_url: str, rows: list[int], prompt: str) -> dict:
    """Per R: the time of one request of R prompts with max_tokens=1 (a prefill of R rows, HTTP included),
    and one decode step of R rows: the extra time of DECODE_STEPS more tokens each (ignore_eos), over them."""
    def timed(client: httpx.Client, r: int, tokens: int) -> float:
        times = []
        for _ in range(STEP_REPEATS + 1):  # the first is a warm-up
            started = time.perf_counter()
            response = client.post("/v1/completions", json={"model": MODEL, "prompt": [prompt] * r, "max_tokens": tokens,
                                                              "temperature": 0.0, "ignore_eos": True})
            times.append(time.perf_counter() - started)
            if response.status_code != 200:
                raise ServerFailed(error_text(response.status_code, response.read()))
        return 1000 * statistics.median(times[1:])

    one, decode = {}, {}
    with httpx.Client(base_url=base_url, timeout=300) as client:
        for r in rows:
            one[r] = timed(client, r, 1)
            decode[r] = (timed(client, r, 1 + DECODE_STEPS) - one[r]) / DECODE_STEPS
    return {"engine": "vllm",
            "method": "through the vLLM peer's /v1/completions, R copies of the prompt in one request: 'ms' is the "
                      "request with max_tokens=1 (prefill of R rows, HTTP included); 'decode ms' is one decode step of "
                      f"R rows, (time with max_tokens={1 + DECODE_STEPS}, ignore_eos - time with max_tokens=1) / "
                      f"{DECODE_STEPS}; medians of {STEP_REPEATS} after a warm-up",
            "rows": {r: {**v, **d} for (r, v), d in zip(ratios(one).items(), ratios(decode, "decode_").values())}}


def ratios(ms: dict[int, float], prefix: str = "") -> dict[str, dict]:
    base = ms.get(1) or min(ms.values())
    return {str(r): {prefix + "ms": round(v, 2), prefix + "ratio_to_1_row": round(v / base, 2) if base > 0 else None}
            for r, v in ms.items()}


# tables ----------------------------------------------------------------------------------------------
def _f(value, digits=2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def table(result: dict) -> str:
    lines = ["| server | mode | clients | ok/failed | completion tokens | wall s | tok/s | TTFT p50 s | latency p50 s | latency p95 s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for lv in result["levels"]:
        lines.append(f"| {lv['server']} | {lv['mode']} | {lv['clients']} | {lv['ok']}/{lv['failed']} | "
                     f"{lv['completion_tokens']} | {_f(lv['wall_s'], 1)} | **{_f(lv['tokens_per_s'], 1)}** | "
                     f"{_f(lv['ttft_p50_s'])} | {_f(lv['latency_p50_s'])} | {_f(lv['latency_p95_s'])} |")
    for u in result["unavailable"]:
        lines.append(f"| {u['server']} | {u.get('mode') or 'all'} | unavailable: {u['reason']} | | | | | | | |")
    lines += [f"\n{name}: {info['note']}" for name, info in result.get("servers", {}).items() if info.get("note")]
    failures = Counter()
    for lv in result["levels"]:
        failures.update(lv["failures"])
    if failures:
        lines.append("\nfailures: " + "; ".join(f"{e} x{n}" for e, n in failures.items()))
    return "\n".join(lines)


def step_table(steps: list[dict]) -> str:
    lines = ["| engine | rows | ms | ratio to 1 row | decode step ms | decode ratio to 1 row |", "|---|---|---|---|---|---|"]
    for s in steps:
        if "rows" not in s:
            lines.append(f"| {s['engine']} | unavailable: {s['reason']} | | | | |")
            continue
        for r, v in s["rows"].items():
            lines.append(f"| {s['engine']} | {r} | {v['ms']:.1f} | {_f(v['ratio_to_1_row'])}x | "
                         f"{_f(v.get('decode_ms'), 1)} | {_f(v.get('decode_ratio_to_1_row'))} |")
    lines += [f"\n{s['engine']}: {s['method']}" for s in steps if "method" in s]
    return "\n".join(lines)


# main ----------------------------------------------------------------------------------------------------
def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.throughput", description=__doc__.splitlines()[0])
    p.add_argument("--backends", default="transformers", help=f"comma-separated, from {list(BACKENDS)}")
    p.add_argument("--modes", default=",".join(m for m in MODES if m != "budget2_served"),
                   help=f"comma-separated, from {list(MODES)}")
    p.add_argument("--clients", type=_ints, default=[1, 2, 4, 8, 16], help="concurrency levels, e.g. 1,2,4,8,16")
    p.add_argument("--requests-per-client", type=int, default=4, help="each client's requests per level, back to back")
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--peer", action=argparse.BooleanOptionalAction, default=True,
                   help="also start vLLM's own OpenAI server on the same weights (vanilla mode, and vLLM's step cost)")
    p.add_argument("--step-rows", type=_ints, default=[1, 8, 16, 64], help="rows of the step cost; empty: none")
    p.add_argument("--model", default=MODEL)
    p.add_argument("--threads", type=int, default=2, help="torch threads of rain-serve's worker and of the step cost")
    p.add_argument("--request-timeout", type=float, default=3600.0, help="seconds, client and server")
    p.add_argument("--device", default="cpu", help="rain-serve's --device, and the transformers step cost's")
    p.add_argument("--dtype", default="float32", help="rain-serve's --dtype, the step cost's and the peer's")
    p.add_argument("--server-flags", default="", help="more rain-serve flags, e.g. '--judge-model qwen2.5-coder-0.5b'")
    p.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[1].parent / "shared" / "evaldata")
    p.add_argument("--prompts", type=int, default=64, help="the first N HH red-team prompts, used in turn")
    p.add_argument("--out", type=Path, default=None, help="write the result as JSON here")
    args = p.parse_args(argv)
    for name, allowed in (("backends", BACKENDS), ("modes", MODES)):
        values = [v for v in getattr(args, name).split(",") if v]
        if unknown := [v for v in values if v not in allowed]:
            p.error(f"--{name}: unknown {unknown}; choose from {list(allowed)}")
        setattr(args, name, values)
    return args


def measure(args, scratch: Path, running: list, result: dict) -> None:
    """Fill `result` as measurements come in (so that an interrupted run still reports what it measured)."""
    prompts = load_prompts(args.data, args.prompts)
    if "transformers" in args.backends and args.step_rows:  # before any server, so that none competes for the cores
        result["step_cost"].append(step_cost_transformers(args.model, args.threads, args.device, args.dtype, args.step_rows,
                                                          prompts[0]))
        print(json.dumps(result["step_cost"][-1]), flush=True)
    for backend in args.backends:
        server = f"rain-serve/{backend}"
        try:
            base_url, argv, note = start_rain_serve(backend, args, scratch, running)
        except ServerFailed as exc:
            result["unavailable"].append({"server": server, "mode": None, "reason": exc.short, "detail": str(exc)})
            print(f"{server}: unavailable ({exc})", flush=True)
            continue
        result["servers"][server] = {"command": shlex.join(argv), **({"note": note} if note else {})}
        run_modes(base_url, server, args.modes, args.clients, args, prompts, result)
        stop_server(running.pop())
    if args.peer:
        vanilla = "vanilla" in args.modes
        try:
            weights, tokenizer = peer_model_dirs(args.model, scratch)
            port = free_port()
            argv = peer_argv(weights, tokenizer, port, args.dtype)
            from rain_core.backends.vllm.backend import cpu_binding
            from rain_core.config import EngineConfig

            # the peer's threads on the cores rain-serve's worker binds (vLLM's own choice leaves it one)
            settings = {"VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "2"),
                        "VLLM_CPU_OMP_THREADS_BIND": os.environ.get("VLLM_CPU_OMP_THREADS_BIND")
                        or cpu_binding(EngineConfig(threads=args.threads), tp=1)}
            base_url = f"http://127.0.0.1:{port}"
            started = time.monotonic()
            running.append(launch(argv, base_url, scratch / "vllm-peer.log", PEER_START_TIMEOUT_S, env={**os.environ, **settings}))
            result["servers"]["vllm-peer"] = {"command": " ".join(f"{k}={v}" for k, v in settings.items()) + " "
                                              + shlex.join(argv), "start_s": round(time.monotonic() - started, 1)}
        except (ServerFailed, OSError, ImportError) as exc:
            why = exc.short if isinstance(exc, ServerFailed) else f"{type(exc).__name__}: {exc}"
            result["unavailable"].append({"server": "vllm-peer", "mode": None, "reason": why, "detail": str(exc)})
            result["step_cost"].append({"engine": "vllm", "reason": f"the peer did not start: {why}"})
            print(f"vllm-peer: unavailable ({exc})", flush=True)
        else:
            if vanilla:
                run_modes(base_url, "vllm-peer", ["vanilla"], args.clients, args, prompts, result)
            if args.step_rows:
                try:
                    result["step_cost"].append(step_cost_vllm(base_url, args.step_rows, prompts[0]))
                except (ServerFailed, httpx.HTTPError) as exc:
                    result["step_cost"].append({"engine": "vllm", "reason": f"{type(exc).__name__}: {exc}"})
                print(json.dumps(result["step_cost"][-1]), flush=True)
            stop_server(running.pop())
    elif args.step_rows and "vllm" in args.backends:
        result["step_cost"].append({"engine": "vllm", "reason": "measured through the peer; run with --peer"})


def main(argv=None) -> None:
    args = parse_args(argv)
    running: list = []  # servers started and not yet stopped

    def interrupted(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupted)  # as Ctrl-C: the finally below stops the servers
    scratch = Path(tempfile.mkdtemp(prefix="rain-throughput-"))  # kept: the servers' logs
    print(f"server logs in {scratch}", flush=True)
    result = {"model": args.model, "max_tokens": args.max_tokens, "clients": args.clients,
              "requests_per_client": args.requests_per_client, "threads": args.threads, "device": args.device,
              "dtype": args.dtype,
              "command": "python -m bench.throughput " + shlex.join(sys.argv[1:] if argv is None else argv),
              "servers": {}, "levels": [], "unavailable": [], "step_cost": []}
    try:
        measure(args, scratch, running, result)
    except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM: report what was measured, then exit 130
        result["interrupted"] = str(exc) or "KeyboardInterrupt"
    finally:
        while running:
            stop_server(running.pop())
    print(json.dumps(result, indent=1))
    print(table(result))
    print()
    print(step_table(result["step_cost"]))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1))
    if "interrupted" in result:
        raise SystemExit(130)


if __name__ == "__main__":
    main()
