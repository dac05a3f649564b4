"""Shared fixtures: the real `rain-serve` in a subprocess on a free port, serving the embedded SmolLM2.

`start_server(*flags)` is the reusable piece: it starts the server with the given flags, waits for
/health, yields a `RunningServer` and stops it (SIGTERM, then SIGKILL). `rain_server` is one such
server shared by the whole session; start others only for flags it lacks.

Every server test runs on each backend (`backend`, session-scoped: pytest orders the tests so that the
servers of one backend are started once and stopped before the other's). A test about one backend says
so with `@pytest.mark.parametrize("backend", ["vllm"], indirect=True)`.

The whole run keeps its model conversions in the clone's git-ignored .cache (or where RAIN_CACHE_DIR
says), not in a cache another checkout shares: the first server of a fresh clone fills it.
"""
from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import pytest

ROOT = Path(__file__).resolve().parents[1]
START_TIMEOUT_S = 300
BACKENDS = ("vllm", "transformers")  # the server's default first
os.environ.setdefault("RAIN_CACHE_DIR", str(ROOT / ".cache" / "rain-models"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class RunningServer:
    process: subprocess.Popen
    port: int
    log_path: Path

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self, api_key: str = "unused", **options):
        """An OpenAI SDK client without retries, so status codes reach the test as they are."""
        from openai import OpenAI

        return OpenAI(base_url=self.base_url + "/v1", api_key=api_key, max_retries=0,
                      timeout=options.pop("timeout", 300), **options)

    def health(self) -> tuple[int, dict]:
        try:
            with urllib.request.urlopen(self.base_url + "/health", timeout=5) as r:
                return r.status, json.load(r)
        except urllib.error.HTTPError as e:
            return e.code, json.load(e)

    def health_status(self) -> Optional[int]:
        """/health's status code; None while nothing listens."""
        try:
            return self.health()[0]
        except OSError:
            return None

    def wait_for(self, predicate, timeout_s: float = 300, what: str = "condition") -> dict:
        """Poll /health until predicate(health body) holds; return that body. The timeout only bounds a
        hang (a loaded CI machine is slow): never make it the claim a test checks."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                _, body = self.health()
                if predicate(body):
                    return body
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout_s} s waiting for {what}\n{self.log_tail()}")
            time.sleep(0.1)

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]


@contextmanager
def start_server(*flags: str, env: Optional[dict] = None, start_timeout_s: float = START_TIMEOUT_S) -> Iterator[RunningServer]:
    binary = Path(sys.executable).parent / "rain-serve"
    if not binary.exists():
        pytest.fail("rain-serve is not installed (scripts/setup.sh)")
    port = free_port()
    log_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"rain-serve-test-{port}.log"
    environment = {k: v for k, v in os.environ.items() if k != "RAIN_API_KEY"}
    # a vLLM engine's KV cache on CPU: 1 GiB holds what these tests ask; the default 2 would put the
    # session's servers (two for each backend at times, a judge's engine too) over a 24 GiB machine
    environment.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    environment.update(env or {})
    with open(log_path, "w") as log:  # a process group of its own, so a test may signal the whole group
        process = subprocess.Popen([str(binary), "--host", "127.0.0.1", "--port", str(port), *flags],
                                   stdout=log, stderr=subprocess.STDOUT, env=environment, cwd=ROOT,
                                   start_new_session=True)
    server = RunningServer(process, port, log_path)
    try:
        deadline = time.monotonic() + start_timeout_s
        while server.health_status() != 200:
            if process.poll() is not None:
                pytest.fail(f"rain-serve exited with {process.returncode}:\n{server.log_tail()}")
            if time.monotonic() > deadline:
                pytest.fail(f"rain-serve did not answer /health in {start_timeout_s} s:\n{server.log_tail()}")
            time.sleep(0.5)
        yield server
    finally:
        stop(process)


def stop(process: subprocess.Popen, grace_s: float = 30) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="session", params=BACKENDS)
def backend(request) -> str:
    return request.param


@pytest.fixture(scope="session")
def rain_server(backend) -> Iterator[RunningServer]:
    """One worker, RAIN by default, two requests interleaved and a short queue, every RAIN request
    re-decoded by vanilla decoding as it ends (a shadow); one thread."""
    with start_server("--backend", backend, "--threads", "1", "--max-running-per-worker", "2", "--max-queue", "8",
                      "--default-mode", "rain", "--shadow-vanilla-rate", "1") as server:
        yield server


@pytest.fixture(scope="session")
def judged_server(backend) -> Iterator[RunningServer]:
    """SmolLM2 with a Qwen2.5-Coder-0.5B judge beside it (on vLLM an engine of its own: two to start),
    vanilla by default. No shadow re-decodes: tests read its engines' counters, and a shadow of one test's
    judged request would still be stepping the engine in the next test's window."""
    with start_server("--backend", backend, "--judge-model", "qwen2.5-coder-0.5b", "--threads", "2",
                      "--default-mode", "vanilla", "--shadow-vanilla-rate", "0", start_timeout_s=600) as server:
        yield server


@pytest.fixture(scope="session")
def launch_server():
    """`start_server` for test modules that need a server with other flags (conftest is not importable
    by name from every directory): `with launch_server("--backend", backend, "--workers", "2") as server: ...`."""
    return start_server


@pytest.fixture(scope="module")
def loop():
    """One event loop for a module that drives a vLLM engine in process: the engine's output handler lives on
    the loop of its first request."""
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()
