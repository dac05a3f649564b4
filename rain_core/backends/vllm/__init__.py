"""The default backend: operations as requests to vLLM's AsyncLLM."""
