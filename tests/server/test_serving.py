"""Serving behaviour on the shared server: disconnects, concurrent clients, a responsive API, metrics.

No clock decides a result here: a test checks an order of events, with generations that cannot end on
their own while the test looks (a search of 10,000 iterations per set), and waits only to bound a hang."""
from __future__ import annotations

import contextlib
import http.client
import json
import socket
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from serve_helpers import (ENDLESS_MAX_TOKENS, ENDLESS_RAIN, HANG_S, MODEL, TINY_RAIN, VANILLA, chat_body, idle, metric, scrape,
                           settled, sse_payloads)

LONG = "Write a very long story about a dragon who learns to cook."


def cancelled(server) -> float:
    return metric(scrape(server.base_url), "rain_requests_total", finish_reason="cancelled")


@pytest.mark.parametrize("options", [VANILLA, ENDLESS_RAIN], ids=["vanilla", "rain"])
def test_stream_disconnect_frees_the_worker(rain_server, options):
    """A client that leaves mid-stream stops its generation; the RAIN one is a search that could not end
    by itself, so the free worker shows the cancel reached it."""
    idle(rain_server)
    before = cancelled(rain_server)
    body = chat_body(LONG, max_tokens=2000, stream=True, **options)
    with httpx.stream("POST", rain_server.base_url + "/v1/chat/completions", json=body, timeout=60) as response:
        payloads = (line for line in response.iter_lines() if line.startswith("data: "))
        next(payloads)  # the role chunk: the generation runs (vanilla: its tokens follow; RAIN: mid-search)
        rain_server.wait_for(lambda h: h["running"] == 1, what="the generation to run")  # (it cannot end by itself)
    idle(rain_server)
    answer = rain_server.client().chat.completions.create(model=MODEL, messages=body["messages"], max_tokens=4,
                                                          extra_body=VANILLA)
    assert answer.usage.completion_tokens == 4
    assert cancelled(rain_server) == before + 1


@pytest.mark.parametrize("options", [VANILLA, ENDLESS_RAIN], ids=["vanilla", "rain"])
def test_non_streamed_disconnect_frees_the_worker(rain_server, options):
    idle(rain_server)
    before = cancelled(rain_server)
    with pytest.raises(httpx.ReadTimeout):  # the client gives up waiting for the whole answer
        httpx.post(rain_server.base_url + "/v1/chat/completions", json=chat_body(LONG, max_tokens=2000, **options),
                   timeout=httpx.Timeout(10, read=2))
    idle(rain_server)
    assert cancelled(rain_server) == before + 1


def test_concurrent_clients_get_their_own_answers(rain_server):
    """Four clients on two interleaved slots and the queue: each gets what it gets alone."""
    client = rain_server.client()
    topics = ["a fruit", "a city", "an animal", "a planet"]

    def ask(topic: str) -> tuple[str, int]:
        answer = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": f"Name {topic}."}],
                                                max_tokens=8, extra_body=VANILLA)
        return answer.choices[0].message.content, answer.usage.completion_tokens

    with ThreadPoolExecutor(len(topics)) as pool:
        together = list(pool.map(ask, topics))
    assert together == [ask(topic) for topic in topics]
    assert len(set(together)) > 1


def test_health_answers_during_a_search(rain_server):
    """A search that cannot end by itself holds the worker; /health answers every time meanwhile."""
    idle(rain_server)
    body = chat_body(LONG, max_tokens=ENDLESS_MAX_TOKENS, stream=True, **ENDLESS_RAIN)
    with httpx.stream("POST", rain_server.base_url + "/v1/chat/completions", json=body, timeout=60) as response:
        payloads = sse_payloads(response)  # held: a dropped iterator would close the stream
        next(payloads)
        with httpx.Client(base_url=rain_server.base_url, timeout=HANG_S) as http:
            answers = [http.get("/health") for _ in range(20)]
    assert [a.status_code for a in answers] == [200] * 20
    assert all(a.json()["running"] == 1 for a in answers)  # each while the search ran
    idle(rain_server)


def raw_post(server, body: bytes) -> socket.socket:
    """Send a whole POST and return the socket, to read the answer from later: once this returns, the
    server has the request (or all but what the kernel still buffers)."""
    connection = socket.create_connection(("127.0.0.1", server.port), timeout=HANG_S)
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
    connection.sendall(head + body)
    return connection


def test_a_huge_prompt_being_checked_stalls_no_other_request(rain_server):
    """The costliest prompt that must be templated and tokenised (every character a token, a second or two
    here) is sent first; a short streamed request sent after it is checked, admitted and opens its stream
    before the huge one's 400 comes back, and then runs to its end. The short one's connection is open
    before the huge prompt is sent, so only the server's work lies between the two (CI's vLLM run lost the
    race twice, for a cause not found here; a client's thread and connection set-up no longer count). It
    starts on a settled engine: what a cancelled search left computing would share the two cores with the
    huge prompt's tokenizer and the short request."""
    settled(rain_server)
    prompt = "a.b,c;d:" * 80_000  # 640k characters: under the length precheck, over the context
    other = http.client.HTTPConnection("127.0.0.1", rain_server.port, timeout=HANG_S)
    other.connect()
    events: list[str] = []
    hostile = raw_post(rain_server, json.dumps({**chat_body(prompt), **VANILLA}).encode())

    def hostile_answer():
        with hostile, hostile.makefile("rb") as reply:
            events.append(reply.readline().decode())  # the status line
            reply.read()

    reader = threading.Thread(target=hostile_answer)
    reader.start()
    other.request("POST", "/v1/chat/completions", json.dumps(chat_body("Say hi.", max_tokens=2, stream=True, **VANILLA)),
                  {"Content-Type": "application/json"})
    stream = other.getresponse()
    payloads = [next(line for line in stream if line.startswith(b"data: "))]  # the role chunk: checked and queued
    events.append("other's stream opened")
    reader.join(HANG_S)
    payloads += [line for line in stream if line.startswith(b"data: ")]
    other.close()
    assert events == ["other's stream opened", "HTTP/1.1 400 Bad Request\r\n"]
    assert len(payloads) == 1 + 2 + 1  # the role, two tokens, [DONE]


def test_metrics_cover_every_family(rain_server, backend):
    base = rain_server.base_url
    client = rain_server.client()
    idle(rain_server)
    # three searches that cannot end by themselves on two slots: one waits; closing their streams cancels them
    with contextlib.ExitStack() as held:
        for _ in range(3):
            held.enter_context(httpx.stream("POST", base + "/v1/chat/completions", timeout=HANG_S,
                                            json=chat_body(LONG, max_tokens=ENDLESS_MAX_TOKENS, stream=True, **ENDLESS_RAIN)))
        rain_server.wait_for(lambda h: h["running"] == 2 and h["waiting"] == 1, what="two running, one waiting")
        busy = scrape(base)
        assert [metric(busy, f"rain_{n}") for n in ("requests_running", "requests_waiting", "workers_alive")] == [2, 1, 1]
    idle(rain_server)
    before = scrape(base)
    assert httpx.post(base + "/v1/chat/completions", json={"model": MODEL}, timeout=10).status_code == 400
    body = chat_body("Count to twenty.", max_tokens=16, stream=True, **VANILLA)
    with ThreadPoolExecutor(3) as pool:
        streams = list(pool.map(lambda _: httpx.post(base + "/v1/chat/completions", json=body, timeout=HANG_S), range(3)))
    assert all(s.status_code == 200 for s in streams)
    rain = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi!"}], max_tokens=3,
                                          extra_body=TINY_RAIN)
    after = scrape(base)

    def grew(name, **labels):
        return metric(after, name, **labels) - metric(before, name, **labels)

    for mode, requests in (("rain", 1), ("vanilla", 3)):
        seconds = {h: grew(f"rain_{h}_seconds_sum", mode=mode, model=MODEL)
                   for h in ("request_latency", "time_to_first_token", "queue_time")}
        for histogram in ("request_latency", "time_to_first_token", "queue_time"):
            assert grew(f"rain_{histogram}_seconds_count", mode=mode, model=MODEL) == requests, (histogram, mode)
        # each request is queued before its first token, which comes before its last
        assert 0 <= seconds["queue_time"] <= seconds["time_to_first_token"] <= seconds["request_latency"], seconds
        assert grew("rain_requests_total", mode=mode, model=MODEL) == requests
        assert grew("rain_prompt_tokens_total", mode=mode, model=MODEL) > 0
    # every vanilla stream has tokens after its first; the RAIN answer's later sets, if it has them
    assert grew("rain_time_per_output_token_seconds_count", mode="vanilla", model=MODEL) == 3
    assert grew("rain_time_per_output_token_seconds_count", mode="rain", model=MODEL) == (rain.model_extra["rain"]["commits"] > 1)
    assert grew("rain_completion_tokens_total", mode="vanilla") == 3 * 16
    assert grew("rain_committed_sets_total", mode="vanilla") == 3 * 16  # one token per vanilla commit
    assert grew("rain_completion_tokens_total", mode="rain") == rain.usage.completion_tokens
    assert grew("rain_committed_sets_total", mode="rain") == rain.model_extra["rain"]["commits"]
    assert grew("rain_search_iterations_total", model=MODEL) == rain.model_extra["rain"]["iterations"] > 0
    assert grew("rain_self_evaluations_total", model=MODEL) == rain.model_extra["rain"]["self_evaluations"] > 0
    assert grew("rain_overhead_ratio_count", model=MODEL) == 1
    assert grew("rain_overhead_ratio_sum", model=MODEL) == pytest.approx(rain.model_extra["rain"]["overhead_ratio"])
    assert grew("rain_engine_work_ratio_count", model=MODEL) == 1
    assert grew("rain_engine_work_ratio_sum", model=MODEL) == pytest.approx(
        rain.model_extra["rain"]["engine_work_ratio"][MODEL])
    # every token these requests fed (3 vanilla streams and the RAIN answer) was computed in some step
    steps, rows = grew("rain_engine_steps_total", model=MODEL), grew("rain_engine_batch_rows_total", model=MODEL)
    assert steps > 0 and grew("rain_engine_batch_tokens_total", model=MODEL) >= rain.model_extra["rain"]["tokens_fed"] + 3 * 16
    if backend == "transformers":  # one request per forward: the steps carried as many rows
        assert steps >= rain.model_extra["rain"]["forward_calls"] and rows == steps
    else:  # vLLM's scheduler batches the running requests' rows into its steps
        assert rows >= steps
    assert grew("rain_errors_total", type="invalid_request_error") == 1
    assert metric(after, "rain_workers_alive") == 1
