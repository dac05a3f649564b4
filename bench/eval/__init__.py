"""Evaluation harness: `python -m bench.eval SUITE` (see __main__.py)."""
