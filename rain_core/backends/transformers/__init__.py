"""The reference backend: operations executed on transformers KV caches."""
