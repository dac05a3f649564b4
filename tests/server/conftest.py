"""Fixtures of the server tests (the servers themselves come from tests/conftest.py)."""
from __future__ import annotations

import pytest

from serve_helpers import API_KEY, STRICT_TIMEOUT_S


@pytest.fixture(scope="session")
def tokenizer():
    from rain_core.models import load_tokenizer, resolve

    return load_tokenizer(resolve("smollm2"))


@pytest.fixture(scope="session")
def strict_server(launch_server, backend):
    """Locked down: an API key (from the environment, as the deployments set it), one slot and a queue of one,
    a short request timeout, vanilla by default. test_limits.py and the playground's key and error tests share
    it: a vLLM server takes a minute to start."""
    with launch_server("--backend", backend, "--threads", "1", "--max-running-per-worker", "1", "--max-queue", "1",
                       "--request-timeout", str(STRICT_TIMEOUT_S), "--default-mode", "vanilla",
                       env={"RAIN_API_KEY": API_KEY}) as server:
        yield server
