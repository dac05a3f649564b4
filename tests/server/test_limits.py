"""A locked-down server (strict_server): API key, one slot and a queue of one, a short request timeout, vanilla
by default.

No clock decides a result: the request timeout is checked by what it cuts (a search that could not end,
a queued request that streams far less than the one before it), and waits only bound a hang."""
from __future__ import annotations

import httpx
import openai
import pytest

from serve_helpers import (API_KEY, ENDLESS_MAX_TOKENS, ENDLESS_RAIN, HANG_S, MODEL, Stream, chat_body, idle)

HEADERS = {"Authorization": f"Bearer {API_KEY}"}
LONG = chat_body("Write a very long story about a lighthouse.", max_tokens=2000)


def keyed_stream(server, body: dict) -> Stream:
    return Stream(server.base_url, body, headers=HEADERS)


def test_api_key_is_required_on_v1_only(strict_server):
    url = strict_server.base_url
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": API_KEY}):
        response = httpx.get(url + "/v1/models", headers=headers, timeout=10)
        assert response.status_code == 401
        assert response.json()["error"]["type"] == "authentication_error"
    with pytest.raises(openai.AuthenticationError):
        strict_server.client(api_key="wrong").chat.completions.create(model=MODEL, messages=LONG["messages"])
    assert httpx.get(url + "/health", timeout=10).status_code == 200
    assert httpx.get(url + "/metrics", timeout=10).status_code == 200


def test_default_mode_vanilla_applies_without_a_rain_object(strict_server):
    answer = strict_server.client(api_key=API_KEY).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=4)
    assert answer.model_extra["rain"]["enabled"] is False and answer.usage.completion_tokens == 4


def content_chunks(chunks: list[dict]) -> int:
    return sum(1 for c in chunks if c.get("choices") and c["choices"][0]["delta"].get("content"))


# Before the full-queue test: on vLLM the engine stayed busy for seconds after that test's cancelled requests
# (a 4-token answer then ran out of the 4 s timeout here; not yet explained, issue 37).
def test_the_choices_of_a_request_are_admitted_all_or_none(strict_server):
    """One free slot and a queue of one hold two choices, not three: three are refused as a whole, and
    none of them runs or waits."""
    idle(strict_server)
    client = strict_server.client(api_key=API_KEY)
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model=MODEL, messages=LONG["messages"], max_tokens=2000, n=3)
    assert caught.value.code == "queue_full"
    health = strict_server.health()[1]
    assert (health["running"], health["waiting"]) == (0, 0)
    answer = client.chat.completions.create(model=MODEL, messages=LONG["messages"], max_tokens=4, n=2)
    assert [c.index for c in answer.choices] == [0, 1]


def test_a_full_queue_is_a_429_and_the_timeout_counts_queue_time(strict_server):
    """With the only slot held by a search that cannot end by itself and the queue full, the next request
    is refused, streamed or not. The search times out; the queued story's timeout counted from its
    arrival, so once the slot is free it streams for the little time it has left: far less than the same
    story streamed alone, first, with a whole timeout (or before it ended)."""
    idle(strict_server)
    alone = keyed_stream(strict_server, LONG).chunks
    idle(strict_server)
    running = keyed_stream(strict_server, {**LONG, "max_tokens": ENDLESS_MAX_TOKENS, **ENDLESS_RAIN})
    strict_server.wait_for(lambda h: h["running"] == 1, timeout_s=HANG_S, what="the first request to run")
    queued = keyed_stream(strict_server, LONG)
    strict_server.wait_for(lambda h: h["waiting"] == 1, timeout_s=HANG_S, what="the second request to queue")
    with pytest.raises(openai.RateLimitError) as caught:
        strict_server.client(api_key=API_KEY).chat.completions.create(model=MODEL, messages=LONG["messages"],
                                                                  max_tokens=4)
    assert caught.value.code == "queue_full"
    assert int(caught.value.response.headers["Retry-After"]) >= 1
    with httpx.stream("POST", strict_server.base_url + "/v1/chat/completions", headers=HEADERS, timeout=60,
                      json={**LONG, "max_tokens": 4, "stream": True}) as refused:  # refused before a stream starts
        assert refused.status_code == 429 and int(refused.headers["Retry-After"]) >= 1
        assert refused.read() and refused.json()["error"]["code"] == "queue_full"

    first, second = running.chunks, queued.chunks
    for chunks in (first, second):
        assert chunks[-1] == {"error": chunks[-1]["error"]}
        assert chunks[-1]["error"]["code"] == "request_timeout" and chunks[-1]["error"]["type"] == "timeout_error"
    assert content_chunks(alone) > 1
    assert content_chunks(second) < content_chunks(alone) / 2, (content_chunks(second), content_chunks(alone))
    idle(strict_server)


def test_request_timeout_is_a_clear_error_and_stops_the_generation(strict_server):
    """A search that could not end by itself: the 504, then the free slot, show the timeout cancelled it."""
    idle(strict_server)
    with pytest.raises(openai.InternalServerError) as caught:
        strict_server.client(api_key=API_KEY).chat.completions.create(model=MODEL, messages=LONG["messages"],
                                                                  max_tokens=ENDLESS_MAX_TOKENS, extra_body=ENDLESS_RAIN)
    assert caught.value.status_code == 504 and caught.value.code == "request_timeout"
    assert "--request-timeout" in caught.value.message
    idle(strict_server)
