"""rain-serve: an OpenAI-compatible server whose answers are aligned at decoding time by RAIN."""
from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Optional

from rain_core.config import VLLM_GPU_MEMORY

from server.config import ServerConfig

DRAIN_MARGIN_S = 15.0  # beyond --request-timeout, for the last in-flight request to finish its reply
# An idle connection outlives the idle timeouts of clients and load balancers in front (httpx and the OpenAI
# SDK 5 s, AWS ALB 60 s), so they close it first: a request is then never sent on a connection the server is
# closing at that moment, which the client sees as a disconnect without a response (uvicorn's default is 5 s).
KEEP_ALIVE_S = 75


def _positive(kind):
    def parse(text: str):
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0, not {text}")
        return value

    return parse


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be within [0, 1], not {text}")
    return value


def _judge_gpu_memory(text: str) -> float:
    value = float(text)
    if not 0.0 < value < VLLM_GPU_MEMORY:
        raise argparse.ArgumentTypeError(f"must be within (0, {VLLM_GPU_MEMORY}): the served model's engine keeps the rest")
    return value


def _judge_value(text: str) -> float:
    value = float(text)
    if not -1.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be within [-1, 1], not {text}")
    return value


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, not {text}")
    return value


def parse_args(argv: Optional[list[str]] = None) -> ServerConfig:
    d = ServerConfig()
    p = argparse.ArgumentParser(prog="rain-serve", description=__doc__)
    p.add_argument("--host", default=d.host)
    p.add_argument("--port", type=int, default=d.port)
    p.add_argument("--model", default=d.model,
                   help="HF id, local dir, .gguf file or alias (smollm2, qwen2.5-coder-0.5b); default: embedded SmolLM2")
    p.add_argument("--device", default=d.device,
                   help="cpu, cuda (each worker pinned to its own --tp GPUs), cuda:0,1,... (only these GPUs)")
    p.add_argument("--dtype", default=d.dtype, choices=["float32", "bfloat16", "float16"])
    p.add_argument("--tp", type=_positive(int), default=d.tp, help="tensor-parallel ranks per worker")
    p.add_argument("--backend", choices=["transformers", "vllm"], default=d.backend,
                   help="what executes the model: transformers (the reference, exact, one forward at a time) or "
                        "vLLM's engine (continuous batching and prefix caching across every request and search leaf)")
    p.add_argument("--workers", type=_positive(int), default=d.workers, help="worker processes, one model replica each")
    p.add_argument("--max-running-per-worker", type=_positive(int), default=d.max_running_per_worker,
                   help="requests a worker runs at once; more wait in the queue (default: 4 on transformers, "
                        "64 on vllm)")
    p.add_argument("--max-queue", type=_non_negative, default=d.max_queue,
                   help="requests that may wait for a worker; beyond that: 429")
    p.add_argument("--request-timeout", type=_positive(float), default=d.request_timeout,
                   help="seconds from arrival until a request is ended with an error")
    p.add_argument("--worker-hang-timeout", type=_positive(float), default=d.worker_hang_timeout,
                   help="seconds a ready worker may send nothing (it beats every second, busy or idle) before it is "
                        "killed as hung and restarted, its requests resumed on the restarted worker")
    p.add_argument("--max-request-bytes", type=_positive(int), default=d.max_request_bytes,
                   help="largest request body accepted; a larger one is a 413")
    p.add_argument("--api-key", default=os.environ.get("RAIN_API_KEY"),
                   help="require 'Authorization: Bearer <key>' on /v1 (default: $RAIN_API_KEY)")
    p.add_argument("--default-mode", choices=["rain", "vanilla"], default=d.default_mode,
                   help="what a request without a `rain` object gets")
    p.add_argument("--shadow-vanilla-rate", type=_fraction, default=d.shadow_vanilla_rate,
                   help="fraction of judged requests re-decoded with vanilla decoding as each ends, so the vanilla "
                        "latency estimate behind rain_overhead_ratio follows the current load")
    p.add_argument("--threads", type=_positive(int), default=d.threads,
                   help="torch threads per worker (default: the cores this process may use / workers)")
    p.add_argument("--judge-model", default=d.judge_model,
                   help="a second model (same forms as --model) loaded into each worker on the same device, "
                        "which judges the requests that ask for rain.judge='served'")
    p.add_argument("--judge-gpu-memory", type=_judge_gpu_memory, default=d.judge_gpu_memory,
                   help="with --backend vllm on GPUs: the share of GPU memory the judge model's engine takes "
                        "out of vLLM's 0.92 (the served model's engine keeps the rest)")
    p.add_argument("--judge-threshold", type=_judge_value, default=d.judge_threshold,
                   help="self_check replaces an answer its judge values at or below this (-1 to 1); the default "
                        "is calibrated for Qwen2.5-Coder-0.5B's yes/no judge (docs/RESULTS.md)")
    args = p.parse_args(argv)
    return ServerConfig(**vars(args))


def main(argv: Optional[list[str]] = None) -> int:
    config = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s api %(levelname)s %(name)s: %(message)s")

    import uvicorn
    from sse_starlette.sse import AppStatus

    from server.api.app import create_app

    # SIGTERM drains: uvicorn stops accepting and waits for in-flight requests, streams included
    # (sse-starlette would otherwise cut them); each one ends by --request-timeout at the latest.
    AppStatus.disable_automatic_graceful_drain()
    try:
        app = create_app(config)
    except (ValueError, FileNotFoundError) as exc:
        print(f"rain-serve: {exc}", file=sys.stderr)
        return 2
    # log_config None: uvicorn's own lines (access lines included) go through the format above, with their time
    uvicorn.run(app, host=config.host, port=config.port, log_level="info", log_config=None,
                timeout_keep_alive=KEEP_ALIVE_S, timeout_graceful_shutdown=int(config.request_timeout + DRAIN_MARGIN_S))
    return 0


if __name__ == "__main__":
    sys.exit(main())
