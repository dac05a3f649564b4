"""The worker processes and their pool: scheduling, lifecycle, messages, the worker loop."""
