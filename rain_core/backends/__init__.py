"""Backends that execute the model operations of rain_core/search/ops.py behind one interface (base.py):
transformers (the reference, exact) and vLLM (continuous batching and prefix caching across every request)."""
from __future__ import annotations

from rain_core.backends.base import Backend
from rain_core.config import EngineConfig


def start_backend(config: EngineConfig) -> Backend:
    """The backend the configuration names, with its models loaded (the one place that asks which)."""
    if config.backend == "vllm":
        from rain_core.backends.vllm.backend import VllmBackend

        return VllmBackend(config)
    from rain_core.backends.transformers.backend import TransformersBackend

    return TransformersBackend(config)
