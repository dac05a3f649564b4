"""Request validation, the rain -> RainConfig mapping, GPU pinning and the speed estimate: no server."""
from __future__ import annotations

import json
import os

import pytest

from rain_core.config import PRESETS, cpu_share
from rain_core.events import Totals
from server.api.chat import ChatCompletionRequest
from server.api.errors import ApiError
from server.api.schemas import parse_request
from server.config import ServerConfig, worker_devices
from server.workers.overhead import VanillaSpeed, wait_per_call


def parse(**fields):
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], **fields}
    return parse_request(ChatCompletionRequest, json.dumps(body).encode())


def refusal(**fields) -> ApiError:
    with pytest.raises(ApiError) as caught:
        parse(**fields)
    assert caught.value.status == 400
    return caught.value


@pytest.mark.parametrize("field, value", [
    ("tools", [{"type": "function", "function": {"name": "f"}}]),
    ("modalities", ["text", "audio"]),
    ("prediction", {"type": "content", "content": "x"}),
    ("response_format", {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}}),
    ("frequency_penalty", 0.5),
    ("logit_bias", {"42": 1}),
    ("tool_choice", "auto"),
    ("reasoning_effort", "low"),
])
def test_unimplemented_fields_are_named(field, value):
    error = refusal(**{field: value})
    assert error.param == field and field in error.message


@pytest.mark.parametrize("fields", [
    {"presence_penalty": 0, "frequency_penalty": 0.0, "logprobs": False, "tools": [], "tool_choice": None},
    {"response_format": {"type": "text"}, "store": False, "service_tier": "auto", "n": 1},
])
def test_fields_at_their_off_value_are_accepted(fields):
    assert parse(**fields).n == 1


@pytest.mark.parametrize("fields, param", [
    ({"n": 9}, "n"),
    ({"n": 0}, "n"),
    ({"seed": 2**70}, "seed"),
    ({"seed": -(2**63) - 1}, "seed"),
    ({"seed": "7"}, "seed"),
    ({"top_logprobs": 3}, "top_logprobs"),
    ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ({"user": "u" * 300}, "user"),
    ({"temperature": 2.5}, "temperature"),
    ({"top_p": 0}, "top_p"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"bogus": 1}, "bogus"),
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].role"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
     "messages[0].content"),
    ({"messages": [{"role": "user", "content": "x", "name": "bob"}]}, "messages[0].name"),
    ({"rain": {"max_iters": 0}}, "rain.max_iters"),
    ({"rain": {"value_threshold": 1.5}}, "rain.value_threshold"),
    ({"rain": {"score": "stars"}}, "rain.score"),
    ({"rain": {"q_normalization": "minmax"}}, "rain.q_normalization"),
    ({"rain": {"parallel_leaves": 0}}, "rain.parallel_leaves"),
    ({"rain": {"parallel_leaves": 17}}, "rain.parallel_leaves"),
    ({"rain": {"parallel_leaves": 2.0}}, "rain.parallel_leaves"),  # strict: an int, not a float
    ({"rain": {"parallel_leaves": True}}, "rain.parallel_leaves"),
    ({"rain": {"strategy": "best_of_n", "parallel_leaves": 2}}, "rain.parallel_leaves"),  # a baseline does not search
    ({"rain": {"preset": "nope"}}, "rain.preset"),
    ({"rain": {"unknown": 1}}, "rain.unknown"),
    ({"rain": {"enabled": False, "max_iters": 3}}, "rain"),
    ({"max_tokens": 5, "max_completion_tokens": 6}, None),
])
def test_invalid_requests_name_the_parameter(fields, param):
    error = refusal(**fields)
    assert error.param == param
    assert error.body().error.type == "invalid_request_error"


def test_not_json_is_a_400():
    deep = b"[" * 100_000 + b"]" * 100_000
    just_too_deep = b'{"model": "m", "messages": [{"role": "user", "content": "hi", "name": ' + b"[" * 40 + b"]" * 40 + b"}]}"
    for raw in (b"{", b"[1, 2]", deep, just_too_deep, b'{"model": "m", "temperature": NaN}',
                b'{"model": "m", "top_p": Infinity}', b"\xff\xfe{}"):
        with pytest.raises(ApiError) as caught:
            parse_request(ChatCompletionRequest, raw)
        assert caught.value.status == 400


def test_messages_map_to_chat_turns():
    request = parse(messages=[
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "one"}, {"type": "text", "text": "two"}]},
        {"role": "assistant", "content": "ok", "refusal": None, "tool_calls": []},
    ])
    assert request.chat_messages() == (
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "one\ntwo"},
        {"role": "assistant", "content": "ok"},
    )


def test_rain_object_maps_onto_the_preset():
    request = parse(temperature=0.7, top_p=0.9, seed=5, stop="END", max_completion_tokens=12,
                    rain={"preset": "truthful", "max_iters": 3, "min_iters": 1, "score": "continuous",
                          "principle": "Be kind", "time_budget_s": 2.5, "q_normalization": "observed",
                          "parallel_leaves": 4})
    assert request.mode("vanilla") == "rain"
    generation = request.generation("rain", request.token_limit)
    rain, params = generation.rain, generation.params
    assert (rain.max_iters, rain.min_iters, rain.time_budget_s) == (3, 1, 2.5)
    assert (rain.candidate_temperature, rain.candidate_top_p) == (0.7, 0.9)
    assert rain.evaluator.score == "continuous" and rain.evaluator.principle == "Be kind"
    assert rain.q_normalization == "observed" and rain.parallel_leaves == 4
    assert rain.min_visits == PRESETS["truthful"].min_visits  # untouched preset values stay
    assert rain.evaluator.criterion == "truthful"
    assert (params.max_new_tokens, params.stop, params.seed, params.temperature) == (12, ("END",), 5, 0.7)


def test_mode_follows_the_rain_object_then_the_default():
    assert parse().mode("rain") == "rain" and parse().mode("vanilla") == "vanilla"
    assert parse(rain={"enabled": False}).mode("rain") == "vanilla"
    assert parse().generation("vanilla", 8).rain is None
    default = parse().generation("rain", 8).rain
    assert default == PRESETS["harmless"]  # no temperature given: the paper's values


def test_each_worker_gets_its_own_gpus():
    assert worker_devices("cpu", 2, 1) == [("cpu", None), ("cpu", None)]
    assert worker_devices("cuda", 2, 2, gpu_count=4) == [("cuda", "0,1"), ("cuda", "2,3")]
    assert worker_devices("cuda:5,7", 2, 1) == [("cuda", "5"), ("cuda", "7")]
    with pytest.raises(ValueError):
        worker_devices("cuda", 3, 1, gpu_count=2)


def test_each_vllm_worker_on_cpu_binds_its_own_cores():
    cores = sorted(os.sched_getaffinity(0))
    config = ServerConfig(backend="vllm", workers=2, threads=1)
    assert [w.engine.cpus for w in config.worker_configs()] == [(cores[0],), (cores[1 % len(cores)],)]
    assert cpu_share(1, 3) == tuple(cores[j % len(cores)] for j in range(3, 6))  # more than there are: around again
    assert [w.engine.cpus for w in ServerConfig(backend="transformers", workers=2).worker_configs()] == [None, None]  # torch's threads are not bound


def test_default_threads_follow_the_cores_this_process_may_use():
    """A cpuset (container limits, taskset) narrows the cores below os.cpu_count(); the default follows it."""
    cores = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, {min(cores)})
        assert [w.engine.threads for w in ServerConfig(workers=2).worker_configs()] == [1, 1]
        assert ServerConfig(workers=1).worker_configs()[0].engine.threads == 1
    finally:
        os.sched_setaffinity(0, cores)
    assert ServerConfig(workers=1).worker_configs()[0].engine.threads == len(cores)


def test_vanilla_speed_estimate():
    """Prefill per prompt token from the time to the first token; decode per later token from the rest."""
    speed = VanillaSpeed()
    assert speed.estimate(10, 10) is None
    speed.observe(Totals(prompt_tokens=10, completion_tokens=6, first_token_s=0.1, wall_s=0.6))
    assert speed.estimate(20, 11) == pytest.approx(20 * 0.01 + 10 * 0.1)
    assert not speed.observe(Totals(prompt_tokens=10, completion_tokens=1, first_token_s=0.1, wall_s=0.2))
    assert not speed.observe(Totals(prompt_tokens=10, completion_tokens=6, first_token_s=None, wall_s=0.2))
    speed.observe(Totals(prompt_tokens=10, completion_tokens=6, first_token_s=0.1, wall_s=1.1))
    assert speed.decode_s_per_token == pytest.approx(0.8 * 0.1 + 0.2 * 0.2)


def test_vanilla_speed_leaves_out_waits_for_other_requests_and_adds_the_judged_requests_own():
    """A sample that took turns with another request on the model thread teaches its own speed; the estimate
    for a judged request adds that request's wait per call for each call of a vanilla answer."""
    speed = VanillaSpeed()
    # 0.3 s of the 0.4 s before the first token, and 0.5 s of the 1.0 s after it, spent waiting
    speed.observe(Totals(prompt_tokens=10, completion_tokens=6, first_token_s=0.4, wall_s=1.4,
                         model_calls=8, model_wait_s=0.8, model_wait_first_s=0.3))
    assert (speed.prefill_s_per_token, speed.decode_s_per_token) == pytest.approx((0.01, 0.1))
    judged = Totals(prompt_tokens=20, completion_tokens=11, model_calls=40, model_wait_s=2.0)
    assert wait_per_call(judged) == pytest.approx(0.05)
    assert speed.estimate(20, 11, wait_per_call(judged)) == pytest.approx(20 * 0.01 + 10 * 0.1 + 11 * 0.05)
    assert wait_per_call(Totals()) == 0.0