"""What one `rain-serve` process is told to do, and how that splits into per-worker configs."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal, Optional

from rain_core.config import DEFAULT_JUDGE_GPU_MEMORY, DEFAULT_JUDGE_THRESHOLD, Backend, EngineConfig, cpu_share, default_threads
from rain_core.models import DEFAULT_MODEL

from server.workers.protocol import WorkerConfig


# Requests a worker runs at once: the transformers backend steps them in turn, one forward each, so
# more only share the same forwards more thinly; vLLM batches them, so more fill its batches.
RUNNING_PER_WORKER = {"transformers": 4, "vllm": 64}


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    model: Optional[str] = None  # as rain_core.models.resolve takes it; None: embedded SmolLM2
    device: str = "cpu"  # cpu, cuda (all visible GPUs), cuda:0,1,... (these GPUs), or any torch device
    dtype: str = "float32"
    tp: int = 1
    backend: Backend = "vllm"  # batches every request's operations (docs/BENCHMARKS.md, bench.throughput)
    workers: int = 1
    max_running_per_worker: Optional[int] = None  # None: the backend's own (RUNNING_PER_WORKER)
    max_queue: int = 64
    request_timeout: float = 600.0
    worker_hang_timeout: float = 30.0  # a ready worker that sends no heartbeat this long is killed and restarted
    max_request_bytes: int = 2 * 1024 * 1024
    api_key: Optional[str] = None
    default_mode: Literal["rain", "vanilla"] = "rain"
    shadow_vanilla_rate: float = 0.25  # of judged requests re-decoded by vanilla at once, to keep the overhead estimate fresh
    threads: Optional[int] = None  # torch threads per worker; None: the CPU cores shared among workers
    judge_model: Optional[str] = None  # a second model per worker, for rain.judge "served"
    judge_gpu_memory: float = DEFAULT_JUDGE_GPU_MEMORY  # vllm backend on GPUs: the judge engine's share of each worker's first GPU
    judge_threshold: float = DEFAULT_JUDGE_THRESHOLD  # self_check's threshold when a request sets none

    @property
    def running_per_worker(self) -> int:
        return self.max_running_per_worker or RUNNING_PER_WORKER[self.backend]

    @property
    def model_alias(self) -> str:
        """The name the user gave the model, accepted as `model` besides its reported id."""
        return self.model or DEFAULT_MODEL

    def worker_configs(self, gpu_count: Optional[int] = None) -> list[WorkerConfig]:
        if self.tp > 1 and self.backend != "vllm":
            raise ValueError("--tp needs --backend vllm: tensor parallelism is vLLM's")
        threads = self.threads or default_threads(self.workers)
        devices = worker_devices(self.device, self.workers, self.tp, gpu_count)
        return [
            WorkerConfig(
                engine=EngineConfig(model=self.model, device=device, dtype=self.dtype, tp=self.tp, backend=self.backend, threads=threads,
                                    cpus=cpu_share(index, threads) if device == "cpu" and self.backend == "vllm" else None,
                                    judge_model=self.judge_model, judge_gpu_memory=self.judge_gpu_memory,
                                    judge_threshold=self.judge_threshold),
                visible_devices=visible,
                shadow_vanilla_rate=self.shadow_vanilla_rate,
                warm_rain=self.default_mode == "rain",
            )
            for index, (device, visible) in enumerate(devices)
        ]


def worker_devices(device: str, workers: int, tp: int, gpu_count: Optional[int] = None) -> list[tuple[str, Optional[str]]]:
    """(device, CUDA_VISIBLE_DEVICES) per worker. On CUDA each worker gets its own `tp` GPUs and sees
    only those, so every replica runs on "cuda" without knowing about the others."""
    kind, _, listed = device.partition(":")
    if kind != "cuda":
        return [(device, None)] * workers
    if listed:
        gpus = listed.split(",")
    else:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        gpus = visible.split(",") if visible else [str(i) for i in range(gpu_count if gpu_count is not None else _cuda_count())]
    needed = workers * tp
    if len(gpus) < needed:
        raise ValueError(f"{workers} workers with --tp {tp} need {needed} GPUs; {device!r} gives {len(gpus)}")
    return [("cuda", ",".join(gpus[i * tp : (i + 1) * tp])) for i in range(workers)]


def _cuda_count() -> int:
    import torch

    return torch.cuda.device_count()
