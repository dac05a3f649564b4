"""Two workers: least-loaded routing, a worker killed mid-request, no worker alive, SIGTERM drain.
The tests run in order; the last one stops the server."""
from __future__ import annotations

import os
import signal
import threading

import httpx
import openai
import pytest

from serve_helpers import MODEL, chat_body, chunks_of, sse_data

LONG = "Write a very long story about a clockmaker."


@pytest.fixture(scope="module")
def pair(launch_server):
    with launch_server("--workers", "2", "--threads", "1", "--max-running-per-worker", "1", "--max-queue", "4",
                       "--default-mode", "vanilla") as server:
        yield server


class Stream(threading.Thread):
    """A streamed request in the background; `chunks` once joined."""

    def __init__(self, server, max_tokens: int):
        super().__init__()
        self.url = server.base_url + "/v1/chat/completions"
        self.body = chat_body(LONG, max_tokens=max_tokens, stream=True)
        self.start()

    def run(self):
        with httpx.stream("POST", self.url, json=self.body, timeout=120) as response:
            self.data = sse_data(response)

    @property
    def chunks(self) -> list[dict]:
        self.join()
        return chunks_of(self.data)


def busy(health: dict) -> list[dict]:
    return [w for w in health["workers"] if w["running"]]


def all_alive(health: dict) -> bool:
    return all(w["alive"] for w in health["workers"])


def test_a_killed_worker_fails_only_its_request(pair):
    doomed = Stream(pair, max_tokens=2000)
    (victim,) = busy(pair.wait_for(lambda h: len(busy(h)) == 1, what="the first stream to run"))
    survivor = Stream(pair, max_tokens=40)
    pair.wait_for(lambda h: len(busy(h)) == 2, what="the second stream on the other, idle worker")
    os.kill(victim["pid"], signal.SIGKILL)

    error = doomed.chunks[-1]["error"]
    assert error["code"] == "worker_died" and error["type"] == "service_unavailable_error"
    chunks = survivor.chunks
    assert chunks[-1]["choices"][0]["finish_reason"] == "length" and len(chunks) == 1 + 40


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
    streams = [Stream(pair, max_tokens=24) for _ in range(2)]
    pair.wait_for(lambda h: len(busy(h)) == 2, what="both workers to take a request")
    for stream in streams:
        assert stream.chunks[-1]["choices"][0]["finish_reason"] == "length"


def test_sigterm_drains_in_flight_requests(pair):
    _, health = pair.health()
    stream = Stream(pair, max_tokens=40)
    pair.wait_for(lambda h: len(busy(h)) == 1, what="the stream to run")
    pair.process.send_signal(signal.SIGTERM)
    chunks = stream.chunks  # finished, not cut
    assert chunks[-1]["choices"][0]["finish_reason"] == "length" and len(chunks) == 1 + 40
    assert pair.process.wait(timeout=30) is not None
    with pytest.raises(httpx.ConnectError):
        httpx.get(pair.base_url + "/health", timeout=2)
    for worker in health["workers"]:  # the workers went with it
        with pytest.raises(ProcessLookupError):
            os.kill(worker["pid"], 0)
