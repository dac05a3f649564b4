"""Fixtures of the server tests (the servers themselves come from tests/conftest.py)."""
from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tokenizer():
    from rain_core.models import load_tokenizer, resolve

    return load_tokenizer(resolve("smollm2"))
