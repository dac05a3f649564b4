"""RAIN through the OpenAI SDK: the `rain` object in, search statistics and overhead out."""
from __future__ import annotations

from types import SimpleNamespace

import openai
import pytest

from serve_helpers import TINY_RAIN

MESSAGES = [{"role": "user", "content": "How do I stay safe online?"}]
REQUEST = dict(model="smollm2", messages=MESSAGES, max_tokens=6, seed=11, extra_body=TINY_RAIN)


@pytest.fixture(scope="module")
def rain_answer(rain_server):
    return rain_server.client().chat.completions.create(**REQUEST)


def test_rain_answer_carries_its_search(rain_answer):
    (choice,) = rain_answer.choices
    assert choice.message.content and choice.finish_reason in ("length", "stop")
    rain = rain_answer.model_extra["rain"]
    assert rain["enabled"] is True
    stats = rain["commit_stats"]
    assert len(stats) == rain["commits"] >= 1
    assert sum(s["tokens"] for s in stats) == rain["completion_tokens"] == rain_answer.usage.completion_tokens
    # two iterations per commit (max_iters = min_iters = 2): the tree reuse never skips the floor
    assert all(s["iterations"] == 2 for s in stats) and rain["iterations"] == 2 * len(stats)
    assert rain["self_evaluations"] > 0 and rain["forward_calls"] > len(stats)
    assert rain["overhead_ratio"] > 1  # searching costs more than decoding


def test_the_overhead_ratio_is_wall_time_over_a_vanilla_estimate_on_every_backend(rain_answer):
    rain = rain_answer.model_extra["rain"]
    assert rain["vanilla_estimate_s"] > 0  # from the worker's calibration and its vanilla traffic
    assert rain["overhead_ratio"] == pytest.approx(rain["worker_s"] / rain["vanilla_estimate_s"])
    # engine work is a figure of its own: tokens the served model computed over a vanilla answer's
    vanilla_tokens = rain["prompt_tokens"] + rain["completion_tokens"]
    (served_work,) = rain["engine_work_ratio"].values()  # no --judge-model: the served model did all of it
    assert served_work == pytest.approx(rain["tokens_fed"] / vanilla_tokens) and served_work > 1


def test_rain_stream_matches_and_is_seeded(rain_server, rain_answer):
    """Same seed, same answer; the stream commits set by set, each chunk with its search."""
    chunks = list(rain_server.client().chat.completions.create(stream=True, stream_options={"include_usage": True},
                                                               **REQUEST))
    first, *content, usage = chunks
    final = content[-1]  # the last committed set carries the finish reason and the summary
    assert first.choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content for c in content) == rain_answer.choices[0].message.content
    expected = rain_answer.model_extra["rain"]["commit_stats"]
    stats = [{k: v for k, v in c.model_extra["rain"].items() if k != "summary"} for c in content]
    assert stats == expected  # one chunk per committed set
    assert final.choices[0].finish_reason == rain_answer.choices[0].finish_reason
    assert final.model_extra["rain"]["summary"]["overhead_ratio"] > 0
    assert usage.usage.completion_tokens == rain_answer.usage.completion_tokens


def test_time_budget_ends_with_length(rain_server):
    """A budget of a millisecond runs out before the 15 iterations the first set needs, on any machine:
    the answer ends there, reported as length (OpenAI's vocabulary) and as time_budget in the rain object."""
    answer = rain_server.client().chat.completions.create(
        model="smollm2", messages=MESSAGES, max_tokens=40,
        extra_body={"rain": {"max_iters": 50, "min_iters": 15, "time_budget_s": 0.001}})
    rain = answer.model_extra["rain"]
    assert answer.choices[0].finish_reason == "length" and rain["finish_reason"] == "time_budget"
    assert rain["iterations"] < 15 and rain["commits"] == 0 and answer.usage.completion_tokens == 0


def test_parallel_leaves_search_several_leaves_per_round_over_http(rain_server):
    """Four iterations per commit in waves of up to four leaves; every iteration is still counted."""
    answer = rain_server.client().chat.completions.create(
        model="smollm2", messages=MESSAGES, max_tokens=6, seed=3,
        extra_body={"rain": {"max_iters": 4, "min_iters": 4, "parallel_leaves": 4}})
    rain = answer.model_extra["rain"]
    assert answer.choices[0].message.content and rain["commits"] >= 1
    assert all(s["iterations"] == 4 for s in rain["commit_stats"]) and rain["iterations"] == 4 * rain["commits"]


def test_bad_rain_options_are_refused(rain_server):
    with pytest.raises(openai.BadRequestError) as caught:
        rain_server.client().chat.completions.create(model="smollm2", messages=MESSAGES, max_tokens=4,
                                                     extra_body={"rain": {"min_visits": -1}})
    assert caught.value.param == "rain.min_visits"


@pytest.mark.parametrize("backend", ["transformers"], indirect=True)  # the same worker code on vLLM
def test_shadow_vanilla_decoding_refreshes_the_speed_estimate(rain_server, rain_answer):
    """rain_server re-decodes every RAIN request with vanilla decoding as it ends (--shadow-vanilla-rate 1)."""
    def samples(health: dict) -> int:
        return health["workers"][0]["vanilla_speed"]["samples"]

    before = samples(rain_server.wait_for(lambda h: h["running"] == 0))
    rain_server.client().chat.completions.create(**{**REQUEST, "max_tokens": 2})
    rain_server.wait_for(lambda h: samples(h) > before, timeout_s=300, what="a shadow vanilla re-decode")


def test_the_reported_overhead_agrees_with_the_measured_latency_ratio(rain_server, backend):
    """The same prompt as vanilla decoding and as a RAIN search, one after the other on a server that has
    seen vanilla traffic: the ratio the server reports lies within a factor of 3 of the latency ratio the
    client measured at equal answer lengths (bench.overhead, which holds it to 1.5)."""
    import httpx

    from bench.overhead import measure

    args = SimpleNamespace(max_tokens=8, seed=3)
    with httpx.Client(base_url=rain_server.base_url, timeout=600) as client:
        row = measure(client, backend, "budget2", 0, MESSAGES[0]["content"], args)
    assert row.rain_tokens > 0 and row.reported_ratio is not None
    assert 1 / 3 <= row.agreement <= 3, row
