"""Backends that execute the model operations of rain_core/ops.py behind one interface (base.py):
transformers (the reference, exact) and vLLM (continuous batching and prefix caching across every request)."""
from __future__ import annotations

from ..config import EngineConfig
from .base import Backend


def start_backend(config: EngineConfig) -> Backend:
    """The backend the configuration names, with its models loaded (the one place that asks which)."""
    if config.backend == "vllm":
        from .vllm import VllmBackend

        return VllmBackend(config)
    from .transformers import TransformersBackend

    return TransformersBackend(config)
