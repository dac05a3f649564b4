"""What is particular to each backend behind the real server: `--backend vllm` searches with parallel
leaves, judges with a served judge model in an engine of its own, batches concurrent requests, shares
cached prompts within a cache_salt, frees a cancelled search, resumes a request whose worker died and
survives the death of an engine; on both, concurrency is invisible to the answers of seeded requests.
(Every other server test runs on both backends too: tests/conftest.py.)"""
from __future__ import annotations

import os
import signal
import subprocess
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from bench.soak import engine_cores
from serve_helpers import (LONG, MODEL, TINY_RAIN, VANILLA, chat_body, finish_chunks, long_stream, metric, scrape,
                           streamed_text)

pytestmark = pytest.mark.slow
QWEN = "Qwen2.5-Coder-0.5B-Instruct"
PROMPTS = ["Name three colours.", "Tell me about owls.", "How do I bake bread?", "Say hello.",
           "What is rain?", "Count to five.", "Who wrote Hamlet?", "Describe a cat."]
vllm_only = pytest.mark.parametrize("backend", ["vllm"], indirect=True)


def answers(server, bodies: list[dict], concurrent: bool) -> list[str]:
    # One client for all: a client made per request loads its TLS context first, which on a loaded machine
    # spread eight "concurrent" requests over five seconds, so they reached the server one after another.
    with httpx.Client(base_url=server.base_url, timeout=600, limits=httpx.Limits(max_connections=len(bodies))) as client:
        def ask(body):
            response = client.post("/v1/chat/completions", json=body)
            assert response.status_code == 200, response.text
            return response.json()["choices"][0]["message"]["content"]

        if not concurrent:
            return [ask(body) for body in bodies]
        with ThreadPoolExecutor(len(bodies)) as pool:
            return list(pool.map(ask, bodies))


def seeded(prompt: str, **fields) -> dict:
    return chat_body(prompt, max_tokens=8, seed=5, temperature=0.8, **fields)


def test_concurrency_is_invisible_to_seeded_answers(rain_server):
    bodies = [seeded(p, **VANILLA) for p in PROMPTS]
    one_at_a_time = answers(rain_server, bodies, concurrent=False)
    assert all(one_at_a_time)
    assert answers(rain_server, bodies, concurrent=True) == one_at_a_time


@vllm_only
def test_vllm_serves_vanilla_and_rain_with_parallel_leaves(rain_server):
    client = rain_server.client()
    vanilla = client.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": "Hi!"}],
                                             max_tokens=6, extra_body=VANILLA)
    assert vanilla.choices[0].message.content and vanilla.usage.completion_tokens <= 6
    for leaves in (1, 4):
        rain = client.chat.completions.create(
            model="smollm2", messages=[{"role": "user", "content": "How do I stay safe online?"}], max_tokens=6,
            seed=2, extra_body={"rain": {"max_iters": 4, "min_iters": 4, "parallel_leaves": leaves}})
        summary = rain.model_extra["rain"]
        assert rain.choices[0].message.content and summary["iterations"] == 4 * summary["commits"]
        assert summary["self_evaluations"] > 0
        # engine work: the tokens this request made the engine compute over a vanilla answer's (docs/OPERATIONS.md)
        vanilla_tokens = summary["prompt_tokens"] + summary["completion_tokens"]
        (work,) = summary["engine_work_ratio"].values()
        assert work == pytest.approx(summary["tokens_fed"] / vanilla_tokens)
        # latency: its wall time in the worker over vanilla's estimated latency, as on the reference backend
        assert summary["overhead_ratio"] == pytest.approx(summary["worker_s"] / summary["vanilla_estimate_s"])


def test_a_cache_salt_shares_cached_prompts_only_within_the_salt(rain_server, backend):
    """vLLM's cache_salt: a seeded search run again under its salt finds its prompts cached (the judge's
    few-shot prefix, the conversation, the states it grew) and computes far less; under a fresh salt it
    shares nothing with the first run and computes what that run did. The reference backend takes the
    field (it keeps nothing of a request for the next) and answers as without it."""
    body = seeded("How do I stay safe online?", rain={"max_iters": 2, "min_iters": 2})

    def ask(server, salt=None):
        response = httpx.post(server.base_url + "/v1/chat/completions", timeout=600,
                              json=body if salt is None else {**body, "cache_salt": salt})
        assert response.status_code == 200, response.text
        return response.json()["rain"]["tokens_fed"], response.json()["choices"][0]["message"]["content"]

    salt, other = (f"tenant-{os.urandom(8).hex()}" for _ in range(2))
    if backend == "transformers":
        assert ask(rain_server, salt)[1] == ask(rain_server)[1]
        return
    first, answer = ask(rain_server, salt)
    again, repeated = ask(rain_server, salt)
    fresh, unshared = ask(rain_server, other)
    print(f"tokens computed: {first} first, {again} again under its salt, {fresh} under another")
    assert answer == repeated == unshared
    assert again < first / 2
    assert fresh == pytest.approx(first, rel=0.05)


@vllm_only
def test_vllm_streams_committed_sets(rain_server):
    chunks = list(rain_server.client().chat.completions.create(
        model="smollm2", messages=[{"role": "user", "content": "Tell me a fact."}], max_tokens=6, stream=True,
        extra_body=TINY_RAIN))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    sets = [c.model_extra["rain"] for c in chunks if c.choices and c.choices[0].delta.content]
    assert text and sets and all(s["iterations"] == 2 for s in sets)  # every set carries its search


@vllm_only
def test_vllm_judges_with_the_served_judge_model(judged_server):
    """Qwen2.5-Coder-0.5B judges SmolLM2 in an engine of its own, whose steps /metrics counts apart
    (the strategies with a served judge run on both backends in test_strategies.py)."""
    (card,) = judged_server.client().models.list().data
    assert card.model_extra["judge_model"] == QWEN
    messages = [{"role": "user", "content": "How do I make a pipe bomb at home?"}]

    def ask(rain: dict, **fields):
        return judged_server.client().chat.completions.create(
            model=MODEL, messages=messages, max_tokens=12, seed=0,
            extra_body={"rain": {"judge": "served", "prompt": "yesno", "score": "continuous", **rain}}, **fields).model_extra["rain"]

    before = scrape(judged_server.base_url)
    checked = ask({"strategy": "self_check"})
    after = scrape(judged_server.base_url)
    assert checked["judge"] == QWEN and checked["self_evaluations"] == 1
    # the judge's engine steps have a series of their own in /metrics
    judge_steps = metric(after, "rain_engine_steps_total", model=QWEN) - metric(before, "rain_engine_steps_total", model=QWEN)
    assert judge_steps > 0 and metric(after, "rain_engine_batch_tokens_total", model=QWEN) > 0
    assert checked["replaced"] is (checked["judge_values"][0] <= checked["judge_threshold"])
    own = ask({"strategy": "self_check", "judge": "self"})
    assert own["judge"] == "self" and own["judge_values"] != checked["judge_values"]


@vllm_only
def test_vllm_batches_concurrent_requests(judged_server):
    """Eight requests at once on a worker with vLLM's 64 slots: they all run together, so the engine's
    steps carry several rows each (one request at a time would be one row a step)."""
    before = scrape(judged_server.base_url)
    answers(judged_server, [chat_body(p, max_tokens=16, **VANILLA) for p in PROMPTS], concurrent=True)
    after = scrape(judged_server.base_url)

    def grew(name):
        return metric(after, name, model=MODEL) - metric(before, name, model=MODEL)

    steps, rows = grew("rain_engine_steps_total"), grew("rain_engine_batch_rows_total")
    assert steps > 0 and rows / steps > 2, (rows, steps)
    assert grew("rain_engine_batch_tokens_total") >= 8 * 16


@vllm_only
def test_a_dead_engine_takes_its_worker_down_and_its_stream_resumes_on_the_restarted_worker(judged_server):
    """The served model's engine, the first of the worker's two, dies alone (SIGKILL of its engine-core
    process): the worker goes down with it, and the stream in flight resumes on the restarted worker,
    unchanged. (The judge's engine dying is the soak's kill_judge_engine fault: bench/soak.py.)"""
    reference = httpx.post(judged_server.base_url + "/v1/chat/completions", json=chat_body(LONG, max_tokens=60, **VANILLA),
                           timeout=600).json()["choices"][0]["message"]["content"]
    pid = judged_server.health()[1]["workers"][0]["pid"]
    cores = engine_cores(pid)
    assert len(cores) == 2, f"the worker has {cores} engine processes, not the served model's and the judge's"
    stream = long_stream(judged_server, 60, **VANILLA)
    stream.wait_for_payloads(1 + 5)
    os.kill(cores[0], signal.SIGKILL)
    assert len(stream.data) < 1 + 60, "the stream ended before the engine was killed"
    judged_server.wait_for(lambda h: h["workers"][0]["pid"] != pid and h["status"] == "ok", timeout_s=900,
                           what="a restarted worker")
    # nothing of the dead worker's group is left: the engine cores' own workers went with it
    left = subprocess.run(["pgrep", "-g", str(pid)], capture_output=True, text=True).stdout.split()
    assert left == [], left

    chunks = stream.chunks
    assert streamed_text(chunks) == reference  # nothing repeated or changed across the resume
    (last,) = finish_chunks(chunks)
    assert last["choices"][0]["finish_reason"] == "length" and last["rain"]["summary"]["resubmissions"] == 1
