"""Two workers: least-loaded routing, a worker killed mid-stream whose request continues on the other,
both killed and back, SIGTERM drain. The tests run in order; the last one stops the server.

On the transformers backend only: these tests need a 120-token greedy stream still running after a second
request has reached the other worker, and on a quiet machine vLLM streams it in seconds, so the order of events
they rely on does not hold there. The pool's logic is the same on both backends; the vLLM worker's death and
resume are tested in test_resume.py (a killed worker, on both backends) and test_backends.py (a killed engine
core)."""
from __future__ import annotations

import os
import signal

import httpx
import pytest

from serve_helpers import HANG_S, busy, finish_chunks, long_stream, reference_text, streamed_text


@pytest.fixture(scope="module")
def pair(launch_server):
    with launch_server("--backend", "transformers", "--workers", "2", "--threads", "1", "--max-running-per-worker", "1", "--max-queue", "4",
                       "--default-mode", "vanilla") as server:
        yield server


def all_alive(health: dict) -> bool:
    return all(w["alive"] for w in health["workers"])


def test_a_killed_worker_s_stream_continues_where_it_was(pair):
    expected = reference_text(pair, 120)
    doomed = long_stream(pair, max_tokens=120)
    (victim,) = busy(pair.wait_for(lambda h: len(busy(h)) == 1, what="the first stream to run"))
    survivor = long_stream(pair, max_tokens=40)
    pair.wait_for(lambda h: len(busy(h)) == 2, what="the second stream on the other, idle worker")
    doomed.wait_for_payloads(1 + 10)
    os.kill(victim["pid"], signal.SIGKILL)
    assert len(doomed.data) < 1 + 120, "the stream ended before its worker was killed"

    chunks = doomed.chunks  # nothing repeated or changed: the uninterrupted greedy answer, token by token
    assert streamed_text(chunks) == expected and len(chunks) == 1 + 120 + 1  # role, one per token, usage
    (last,) = finish_chunks(chunks)
    assert last["choices"][0]["finish_reason"] == "length" and last["rain"]["summary"]["resubmissions"] == 1
    assert chunks[-1]["usage"]["completion_tokens"] == 120
    survived = survivor.chunks
    assert finish_chunks(survived)[0]["choices"][0]["finish_reason"] == "length" and len(survived) == 1 + 40 + 1


def test_both_workers_killed_come_back_and_serve(pair):
    """Kill the other worker while the first one restarts; then both must serve again. (What a request
    meets while no worker is alive: tests/server/test_resume.py.)"""
    _, health = pair.health()
    killed = {w["pid"] for w in health["workers"] if w["alive"]}
    for pid in killed:
        os.kill(pid, signal.SIGKILL)
    pair.wait_for(lambda h: not any(w["alive"] for w in h["workers"]), what="/health to notice")

    restarted = pair.wait_for(all_alive, timeout_s=600, what="both workers to restart")
    assert all(w["restarts"] >= 1 and w["pid"] not in killed for w in restarted["workers"])
    streams = [long_stream(pair, max_tokens=24) for _ in range(2)]
    pair.wait_for(lambda h: len(busy(h)) == 2, what="both workers to take a request")
    for stream in streams:
        assert finish_chunks(stream.chunks)[0]["choices"][0]["finish_reason"] == "length"


def test_sigterm_to_every_process_group_drains_in_flight_requests(pair):
    """SIGTERM sent to the API's whole process group (as a terminal's Ctrl-C or a supervisor's group kill
    sends it) and to each worker: the workers ignore it; the API process stops listening at once, while
    the stream in flight goes on to its end; then it stops the workers and exits."""
    _, health = pair.health()
    stream = long_stream(pair, max_tokens=120)
    pair.wait_for(lambda h: len(busy(h)) == 1, what="the stream to run")
    for worker in health["workers"]:
        os.kill(worker["pid"], signal.SIGTERM)
    os.killpg(pair.process.pid, signal.SIGTERM)
    while True:  # until a new connection is no longer served
        try:
            httpx.get(pair.base_url + "/health", timeout=HANG_S)
        except (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError):
            # Refused, or accepted in the instant the socket closed and then dropped unanswered as idle.
            break
    assert stream.is_alive(), "the stream ended before the server stopped listening"
    chunks = stream.chunks  # finished, not cut
    assert finish_chunks(chunks)[0]["choices"][0]["finish_reason"] == "length" and len(chunks) == 1 + 120 + 1
    assert pair.process.wait(timeout=HANG_S) in (0, -signal.SIGTERM)  # uvicorn may re-raise what it drained on
    for worker in health["workers"]:  # the workers went with it
        with pytest.raises(ProcessLookupError):
            os.kill(worker["pid"], 0)
