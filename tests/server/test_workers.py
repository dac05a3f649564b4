"""Two workers: least-loaded routing, a worker killed mid-stream whose request continues on the other,
no worker alive, SIGTERM drain. The tests run in order; the last one stops the server."""
from __future__ import annotations

import os
import signal

import httpx
import openai
import pytest

from serve_helpers import MODEL, busy, finish_chunks, long_stream, reference_text, streamed_text


@pytest.fixture(scope="module")
def pair(launch_server):
    with launch_server("--workers", "2", "--threads", "1", "--max-running-per-worker", "1", "--max-queue", "4",
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


def test_no_worker_alive_is_a_503_then_all_come_back(pair):
    """Kill the other worker while the first one restarts; then both must serve again."""
    _, health = pair.health()
    killed = {w["pid"] for w in health["workers"] if w["alive"]}
    for pid in killed:
        os.kill(pid, signal.SIGKILL)
    pair.wait_for(lambda h: h["status"] == "unavailable", what="/health to notice")
    assert pair.health()[0] == 503
    with pytest.raises(openai.InternalServerError) as caught:
        pair.client().chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=2)
    assert caught.value.status_code == 503 and caught.value.code == "no_worker"

    restarted = pair.wait_for(all_alive, timeout_s=180, what="both workers to restart")
    assert all(w["restarts"] >= 1 and w["pid"] not in killed for w in restarted["workers"])
    streams = [long_stream(pair, max_tokens=24) for _ in range(2)]
    pair.wait_for(lambda h: len(busy(h)) == 2, what="both workers to take a request")
    for stream in streams:
        assert finish_chunks(stream.chunks)[0]["choices"][0]["finish_reason"] == "length"


def test_sigterm_drains_in_flight_requests(pair):
    _, health = pair.health()
    stream = long_stream(pair, max_tokens=40)
    pair.wait_for(lambda h: len(busy(h)) == 1, what="the stream to run")
    pair.process.send_signal(signal.SIGTERM)
    chunks = stream.chunks  # finished, not cut
    assert finish_chunks(chunks)[0]["choices"][0]["finish_reason"] == "length" and len(chunks) == 1 + 40 + 1
    assert pair.process.wait(timeout=30) is not None
    with pytest.raises(httpx.ConnectError):
        httpx.get(pair.base_url + "/health", timeout=2)
    for worker in health["workers"]:  # the workers went with it
        with pytest.raises(ProcessLookupError):
            os.kill(worker["pid"], 0)
