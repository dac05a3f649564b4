"""Backends that execute the model operations of rain_core/ops.py: transformers (the reference, exact)
and vLLM (continuous batching and prefix caching across every request)."""
