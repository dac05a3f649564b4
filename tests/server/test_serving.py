"""Serving behaviour on the shared server: disconnects, concurrent clients, a responsive API, metrics."""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from serve_helpers import MODEL, TINY_RAIN, VANILLA, chat_body, metric, scrape, sse_payloads

LONG = "Write a very long story about a dragon who learns to cook."


def idle(server) -> dict:
    return server.wait_for(lambda h: h["running"] == 0 and h["waiting"] == 0, timeout_s=5,
                           what="the worker to be free again")


@pytest.mark.parametrize("options", [VANILLA, {"rain": {}}], ids=["vanilla", "rain"])
def test_stream_disconnect_frees_the_worker(rain_server, options):
    """A client that leaves mid-stream stops its generation (a RAIN search within one iteration)."""
    cancelled = metric(scrape(rain_server.base_url), "rain_requests_total", finish_reason="cancelled")
    body = chat_body(LONG, max_tokens=2000, stream=True, **options)
    with httpx.stream("POST", rain_server.base_url + "/v1/chat/completions", json=body, timeout=60) as response:
        payloads = (line for line in response.iter_lines() if line.startswith("data: "))
        for _ in range(2 if options is VANILLA else 1):  # vanilla: the role and a token; RAIN: mid-search
            next(payloads)
        assert rain_server.health()[1]["running"] == 1
    idle(rain_server)
    started = time.monotonic()
    answer = rain_server.client().chat.completions.create(model=MODEL, messages=body["messages"], max_tokens=4,
                                                          extra_body=VANILLA)
    assert answer.usage.completion_tokens == 4 and time.monotonic() - started < 15
    assert metric(scrape(rain_server.base_url), "rain_requests_total", finish_reason="cancelled") == cancelled + 1


def test_non_streamed_disconnect_frees_the_worker(rain_server):
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(rain_server.base_url + "/v1/chat/completions", json=chat_body(LONG, max_tokens=2000, **VANILLA),
                   timeout=httpx.Timeout(10, read=2))
    idle(rain_server)


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


def test_health_answers_within_100ms_during_a_search(rain_server):
    """A long streamed search holds the worker while /health is timed; leaving the stream then ends it."""
    body = chat_body(LONG, max_tokens=2000, stream=True, rain={})
    with httpx.stream("POST", rain_server.base_url + "/v1/chat/completions", json=body, timeout=60) as response:
        payloads = sse_payloads(response)  # held: a dropped iterator would close the stream
        next(payloads)
        times = []
        with httpx.Client(base_url=rain_server.base_url, timeout=5) as http:
            for _ in range(20):
                started = time.perf_counter()
                assert http.get("/health").status_code == 200
                times.append(time.perf_counter() - started)
                time.sleep(0.05)
            assert http.get("/health").json()["running"] == 1, "the search ended before the measurement did"
    idle(rain_server)
    assert max(times) < 0.1, times


def test_metrics_cover_every_family(rain_server):
    base = rain_server.base_url
    client = rain_server.client()
    before = scrape(base)
    assert httpx.post(base + "/v1/chat/completions", json={"model": MODEL}, timeout=10).status_code == 400
    # three streams on two slots: one waits
    body = chat_body("Count to twenty.", max_tokens=16, stream=True, **VANILLA)
    with ThreadPoolExecutor(3) as pool:
        streams = [pool.submit(lambda: httpx.post(base + "/v1/chat/completions", json=body, timeout=120))
                   for _ in range(3)]
        rain_server.wait_for(lambda h: h["running"] == 2 and h["waiting"] == 1, what="two running, one waiting")
        busy = scrape(base)
        assert [metric(busy, f"rain_{n}") for n in ("requests_running", "requests_waiting", "workers_alive")] == [2, 1, 1]
        assert all(s.result().status_code == 200 for s in streams)
    rain = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi!"}], max_tokens=3,
                                          extra_body=TINY_RAIN)
    after = scrape(base)

    def grew(name, **labels):
        return metric(after, name, **labels) - metric(before, name, **labels)

    for mode in ("rain", "vanilla"):
        for histogram in ("request_latency", "time_to_first_token", "time_per_output_token", "queue_time"):
            assert grew(f"rain_{histogram}_seconds_count", mode=mode, model=MODEL) >= 1, (histogram, mode)
        assert grew("rain_requests_total", mode=mode, model=MODEL) >= 1
        assert grew("rain_prompt_tokens_total", mode=mode, model=MODEL) > 0
    assert grew("rain_completion_tokens_total", mode="vanilla") == 3 * 16
    assert grew("rain_committed_sets_total", mode="vanilla") == 3 * 16  # one token per vanilla commit
    assert grew("rain_completion_tokens_total", mode="rain") == rain.usage.completion_tokens
    assert grew("rain_committed_sets_total", mode="rain") == rain.model_extra["rain"]["commits"]
    assert grew("rain_search_iterations_total", model=MODEL) == rain.model_extra["rain"]["iterations"] > 0
    assert grew("rain_self_evaluations_total", model=MODEL) == rain.model_extra["rain"]["self_evaluations"] > 0
    assert grew("rain_overhead_ratio_count", model=MODEL) == 1
    assert grew("rain_overhead_ratio_sum", model=MODEL) == pytest.approx(rain.model_extra["rain"]["overhead_ratio"])
    # one request per forward on the transformers backend: the steps carried as many rows, and every
    # token these requests fed (3 vanilla streams and the RAIN answer, plus earlier ones' not yet counted)
    steps = grew("rain_engine_steps_total", model=MODEL)
    assert steps >= rain.model_extra["rain"]["forward_calls"] > 0
    assert grew("rain_engine_batch_rows_total", model=MODEL) == steps
    assert grew("rain_engine_batch_tokens_total", model=MODEL) >= rain.model_extra["rain"]["tokens_fed"] + 3 * 16
    assert grew("rain_errors_total", type="invalid_request_error") == 1
    assert metric(after, "rain_workers_alive") == 1
