"""A locked-down server: API key, one slot and no queue, a short request timeout, vanilla by default."""
from __future__ import annotations

import threading
import time

import httpx
import openai
import pytest

from serve_helpers import MODEL, chat_body, chunks_of, sse_data

KEY = "s3cret"
TIMEOUT_S = 4
LONG = chat_body("Write a very long story about a lighthouse.", max_tokens=2000)


@pytest.fixture(scope="module")
def strict_server(launch_server):
    with launch_server("--threads", "1", "--max-running-per-worker", "1", "--max-queue", "0",
                      "--request-timeout", str(TIMEOUT_S), "--default-mode", "vanilla",
                      env={"RAIN_API_KEY": KEY}) as server:
        yield server


def test_api_key_is_required_on_v1_only(strict_server):
    url = strict_server.base_url
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
        response = httpx.get(url + "/v1/models", headers=headers, timeout=10)
        assert response.status_code == 401
        assert response.json()["error"]["type"] == "authentication_error"
    with pytest.raises(openai.AuthenticationError):
        strict_server.client(api_key="wrong").chat.completions.create(model=MODEL, messages=LONG["messages"])
    assert httpx.get(url + "/health", timeout=10).status_code == 200
    assert httpx.get(url + "/metrics", timeout=10).status_code == 200


def test_default_mode_vanilla_applies_without_a_rain_object(strict_server):
    answer = strict_server.client(api_key=KEY).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=4)
    assert answer.model_extra["rain"]["enabled"] is False and answer.usage.completion_tokens == 4


def test_full_queue_is_a_429_with_retry_after(strict_server):
    """With the only slot busy and no queue, the next request is refused; the busy one then times out
    in-band, because its stream had started."""
    headers = {"Authorization": f"Bearer {KEY}"}
    received: dict = {}

    def hold_the_slot():
        with httpx.stream("POST", strict_server.base_url + "/v1/chat/completions", json={**LONG, "stream": True},
                          headers=headers, timeout=60) as response:
            received["data"] = sse_data(response)

    holder = threading.Thread(target=hold_the_slot)
    holder.start()
    strict_server.wait_for(lambda h: h["running"] == 1, what="the first request to run")
    with pytest.raises(openai.RateLimitError) as caught:
        strict_server.client(api_key=KEY).chat.completions.create(model=MODEL, messages=LONG["messages"],
                                                                  max_tokens=4)
    assert caught.value.code == "queue_full"
    assert int(caught.value.response.headers["Retry-After"]) >= 1
    holder.join()
    chunks = chunks_of(received["data"])
    assert chunks[-1] == {"error": chunks[-1]["error"]}
    assert chunks[-1]["error"]["code"] == "request_timeout" and chunks[-1]["error"]["type"] == "timeout_error"
    assert len(chunks) > 2  # it had streamed tokens before the timeout
    strict_server.wait_for(lambda h: h["running"] == 0, timeout_s=5, what="the timed-out request to stop")


def test_request_timeout_is_a_clear_error(strict_server):
    started = time.monotonic()
    with pytest.raises(openai.InternalServerError) as caught:
        strict_server.client(api_key=KEY).chat.completions.create(model=MODEL, messages=LONG["messages"],
                                                                  max_tokens=2000)
    assert caught.value.status_code == 504 and caught.value.code == "request_timeout"
    assert "--request-timeout" in caught.value.message
    assert TIMEOUT_S <= time.monotonic() - started < TIMEOUT_S + 5
    strict_server.wait_for(lambda h: h["running"] == 0, timeout_s=5, what="the timed-out request to stop")
