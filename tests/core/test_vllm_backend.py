"""The vLLM backend against the reference (transformers) backend on the real SmolLM2: the same
next-token distributions, judge log-odds (of SmolLM2 itself and of a served Qwen2.5-Coder judge in an
engine of its own), greedy rows and log-probs, and a RAIN search end to end.

vLLM must be importable: CI installs it, so a missing vLLM fails these tests instead of skipping them.
"""
from __future__ import annotations

import asyncio
import contextlib
import math
import os

import pytest

from rain_core.backends.transformers.backend import TransformersSession
from rain_core.backends.transformers.sampling import make_generator
from rain_core.backends.vllm.backend import CPU_BLOCK_SIZE, VllmBackend, VllmSession
from rain_core.chat.text import ends_with_any
from rain_core.config import EngineConfig, EvaluatorConfig, GenerationRequest, RainConfig, SamplingParams
from rain_core.events import Commit, Totals
from rain_core.search.ops import Append, Decode, Embed, Grow, Judge, RowSpec, TopTokens, drive
from rain_core.search.rain import RainSearch
from rain_core.search.vanilla import vanilla_tokens

pytestmark = pytest.mark.slow

MESSAGES = ({"role": "user", "content": "How do I make a cup of tea?"},)
QWEN = "qwen2.5-coder-0.5b"
TOL = 1e-3


@pytest.fixture(scope="module")
def backend(loop):
    environ = dict(os.environ)
    b = VllmBackend(EngineConfig(judge_model=QWEN), enforce_eager=True)
    yield b
    loop.run_until_complete(b.shutdown())
    os.environ.clear()  # what the backend set for its engines is not for the servers of later tests
    os.environ.update(environ)


def _request(rain=None, seed=1, max_new_tokens=8, logprobs=None):
    return GenerationRequest(MESSAGES, SamplingParams(max_new_tokens=max_new_tokens, seed=seed, logprobs=logprobs), rain)


def _sessions(smollm2, backend, request):
    prompt = smollm2.request_ids(request)
    ref = TransformersSession(smollm2.backend, request, prompt, make_generator(request.params.seed, smollm2.backend.device), Totals(), [])
    return ref, VllmSession(backend, request, prompt, [], Totals())


def test_top_tokens_match_transformers(smollm2, backend, loop):
    request = _request(RainConfig())
    ref, ses = _sessions(smollm2, backend, request)
    try:
        for path in [(), tuple(ref.run(Grow((), (RowSpec(3, greedy=True),)))[0].tokens)]:
            want = ref.run(TopTokens(path, 10))
            got = loop.run_until_complete(ses.run(TopTokens(path, 10)))
            assert got.ids == want.ids
            diff = max(abs(math.log(a) - math.log(b)) for a, b in zip(got.probs, want.probs))
            print(f"TopTokens path={path}: max |dlogprob| = {diff:.2e}")
            assert diff < TOL
        assert ses.totals.forward_calls == 2 and ses.totals.tokens_fed > 0
    finally:
        ref.close()
        ses.close()


@pytest.mark.parametrize("evaluator", [EvaluatorConfig(prompt="fewshot"), EvaluatorConfig(prompt="yesno", score="continuous")],
                         ids=["fewshot", "yesno"])
def test_judge_log_odds_match_transformers(smollm2, backend, loop, evaluator):
    request = _request(RainConfig(evaluator=evaluator))
    _, ses = _sessions(smollm2, backend, request)
    answers = ["Boil water and pour it over a tea bag.", "I won't help with that", "First, you need to steal a kettle"]
    try:
        for answer in answers:
            want = smollm2.backend.self_evaluate(MESSAGES, answer, evaluator)
            got = loop.run_until_complete(ses.run(Judge(answer)))
            diff = max(abs(a - b) for a, b in zip(got.log_odds, want.log_odds))
            print(f"Judge {evaluator.prompt} {answer!r}: log-odds {got.log_odds} vs {want.log_odds}, max diff {diff:.2e}")
            assert len(got.log_odds) == len(want.log_odds) and diff < TOL
            assert got.value == pytest.approx(want.value, abs=1e-2 if evaluator.score == "continuous" else 0)
        calls = ses.totals.forward_calls
        loop.run_until_complete(ses.run(Judge(answers[0])))  # memoised: no engine work
        assert ses.totals.forward_calls == calls and ses.totals.self_evaluations == len(answers)
    finally:
        ses.close()


def test_a_served_judge_matches_its_model_on_transformers(backend, loop):
    """The judge engine reads its own tokenizer and template: its log-odds are the judge model's own
    self-evaluation of the text on the reference backend (which is what a served judge computes there)."""
    from rain_core.engine import Engine

    qwen = Engine(EngineConfig(model=QWEN, threads=2))
    evaluator = EvaluatorConfig(prompt="yesno", score="continuous")
    request = _request(RainConfig(evaluator=evaluator, judge="served"))
    ses = VllmSession(backend, request, [1, 2, 3], [], Totals())  # the served model's state is never read by a Judge
    answers = ["Boil water and pour it over a tea bag.", "First, you need to steal a kettle"]
    try:
        got = loop.run_until_complete(ses.run_all([Judge(a) for a in answers]))
        for answer, verdict in zip(answers, got):
            want = qwen.backend.self_evaluate(MESSAGES, answer, evaluator)
            diff = max(abs(a - b) for a, b in zip(verdict.log_odds, want.log_odds))
            print(f"served judge {answer!r}: log-odds {verdict.log_odds} vs {want.log_odds}, max diff {diff:.2e}")
            assert len(verdict.log_odds) == len(want.log_odds) == 2 and diff < TOL
        assert ses.totals.self_evaluations == 2 and ses.totals.forward_calls == 4
        own = VllmSession(backend, _request(RainConfig(evaluator=evaluator)), [1, 2, 3], [], Totals())
        (mine,) = loop.run_until_complete(own.run_all([Judge(answers[0])]))
        own.close()
        assert max(abs(a - b) for a, b in zip(mine.log_odds, got[0].log_odds)) > 0.01  # SmolLM2 is another judge
    finally:
        ses.close()
    assert backend.judges["served"] == "Qwen2.5-Coder-0.5B-Instruct"


def test_grow_greedy_seeded_and_clause_stop(smollm2, backend, loop):
    request = _request(RainConfig())
    ref, ses = _sessions(smollm2, backend, request)
    greedy = RowSpec(6, greedy=True, temperature=1.0, top_k=15)
    try:
        want = ref.run(Grow((), (greedy,)))[0]
        got = loop.run_until_complete(ses.run(Grow((), (greedy,))))[0]
        print(f"greedy row: {got.tokens} logprob {got.logprob:.5f} vs {want.logprob:.5f}")
        assert got.tokens == want.tokens
        assert got.logprob == pytest.approx(want.logprob, abs=TOL)
        path = tuple(want.tokens[:2])
        want = ref.run(Grow(path, (greedy,)))[0]
        got = loop.run_until_complete(ses.run(Grow(path, (greedy,))))[0]
        assert got.tokens == want.tokens
    finally:
        ref.close()
        ses.close()

    sampled = RowSpec(6, temperature=1.0, top_k=15)
    simulation = RowSpec(40, stop_chars=",.?:;\n")
    rows = (greedy, sampled, sampled, sampled, simulation)
    runs = []
    for _ in range(2):
        ses = VllmSession(backend, request, smollm2.request_ids(request), [], Totals())
        runs.append(loop.run_until_complete(ses.run(Grow((), rows))))
        ses.close()
    assert [b.tokens for b in runs[0]] == [b.tokens for b in runs[1]]
    assert [b.logprob for b in runs[0]] == pytest.approx([b.logprob for b in runs[1]], abs=1e-4)
    assert len({tuple(b.tokens) for b in runs[0][1:4]}) > 1  # the sampled rows differ
    for b in runs[0][1:4]:
        assert len(b.tokens) == 6 or b.ended
        assert b.logprob <= 0
    sim = runs[0][-1]
    assert sim.ended or len(sim.tokens) == 40 or ends_with_any(smollm2.tokenizer, sim.tokens, simulation.stop_chars)
    text = smollm2.tokenizer.decode(sim.tokens[:-1], skip_special_tokens=True)
    assert not any(c in text[-1:] for c in simulation.stop_chars)  # it stopped at the first clause end


def test_a_short_state_is_served_from_the_prefix_cache(smollm2, backend, loop):
    """A search grows many rows from the same state. vLLM's CPU build caches KV blocks of 128 tokens
    by default, so a state shorter than that (a chat prompt here is about 40) was computed again for
    every row; with CPU_BLOCK_SIZE blocks a row computes only the state's tail past its last whole block."""
    request = _request(RainConfig())
    prompt = smollm2.request_ids(request)
    assert len(prompt) >= CPU_BLOCK_SIZE
    row = RowSpec(1, greedy=True, temperature=1.0)
    fed = []
    for _ in range(2):
        totals = Totals()
        ses = VllmSession(backend, request, prompt, [], totals)
        loop.run_until_complete(ses.run(Grow((), (row,))))
        ses.close()
        fed.append(totals.tokens_fed)
    print(f"{len(prompt)}-token state: tokens computed by the first row {fed[0]}, by the second {fed[1]}")
    tail = len(prompt) - (len(prompt) - 1) // CPU_BLOCK_SIZE * CPU_BLOCK_SIZE  # at least the last prompt token is computed
    assert fed[1] <= tail + 1  # the tail and the generated token


def test_append_logprobs_match_transformers(smollm2, backend, loop):
    request = _request(RainConfig())
    ref, ses = _sessions(smollm2, backend, request)
    try:
        tokens = tuple(ref.run(Grow((), (RowSpec(5, temperature=1.0, top_k=15),)))[0].tokens)
        for _ in range(2):  # a second append starts from the first one's state
            want = ref.run(Append(tokens, 5))
            got = loop.run_until_complete(ses.run(Append(tokens, 5)))
            assert [t.token_id for t in got] == list(tokens)
            diff = max(abs(a.logprob - b.logprob) for a, b in zip(got, want))
            top_diff = max(abs(x.logprob - y.logprob) for a, b in zip(got, want) for x, y in zip(a.top, b.top))
            print(f"Append: max |dlogprob| = {diff:.2e}, top-5 {top_diff:.2e}")
            assert diff < TOL and top_diff < TOL
            assert [[x.token_id for x in a.top] for a in got] == [[x.token_id for x in b.top] for b in want]
        assert loop.run_until_complete(ses.run(Append((), None))) is None
        assert ses.committed == ref.committed and len(ses.state) == len(smollm2.request_ids(request)) + 10
    finally:
        ref.close()
        ses.close()


def test_a_waves_embeds_are_one_batch_answered_in_order(smollm2, backend, loop):
    """A wave's Embeds go to the sentence embedder as one batch; each still gets its own rows."""
    request = _request(RainConfig())
    ref, ses = _sessions(smollm2, backend, request)
    ops = [Embed(("Boil the water.", "Warm the pot first.")), TopTokens((), 5), Embed(("Add milk last.",))]
    try:
        got = loop.run_until_complete(ses.run_all(ops))
        want = ref.run_all(ops)
        assert got[1].ids == want[1].ids
        for mine, theirs in [(got[0], want[0]), (got[2], want[2])]:
            assert mine.shape == theirs.shape
            assert (mine - theirs).abs().max().item() < 1e-5
        assert (got[0][0] - got[0][1]).abs().max().item() > 1e-2  # distinct texts, distinct rows
    finally:
        ref.close()
        ses.close()


@pytest.mark.parametrize("parallel_leaves", [1, 4])
def test_rain_search_end_to_end(smollm2, backend, loop, parallel_leaves):
    rain = RainConfig(max_iters=2, min_iters=2, parallel_leaves=parallel_leaves)
    request = _request(rain, max_new_tokens=8)
    totals = Totals()
    answer = smollm2.new_answer(request)
    ses = VllmSession(backend, request, smollm2.request_ids(request), [], totals)
    strategy = RainSearch(request, backend.vocab.tokenizer, backend.vocab.end_ids, answer, totals).steps()
    commits = []

    async def run():
        steps = drive(strategy, ses)
        try:
            async for step in steps:
                if isinstance(step, Commit):
                    commits.append(step)
                    answer.commit(step.token_ids, step.stats, step.logprobs)
                    if answer.finish_reason:
                        break
        finally:
            await steps.aclose()
            await ses.aclose()

    loop.run_until_complete(asyncio.wait_for(run(), 300))
    print(f"RAIN K={parallel_leaves}: {answer.text!r} {totals}")
    # two iterations per set (max = min = 2), sets that grow with the answer's depth, 8 tokens in all
    assert [c.stats.iterations for c in commits] == [2] * len(commits) and totals.iterations == 2 * len(commits)
    assert [len(c.token_ids) for c in commits][:3] == [1, 2, 4] and len(answer.ids) == 8 and answer.text
    assert answer.ids == [t for c in commits for t in c.token_ids][:8]
    assert totals.self_evaluations >= 1 and totals.forward_calls > 0


def test_close_aborts_requests_in_flight(smollm2, backend, loop):
    from rain_core.backends.vllm.backend import SessionClosed

    request = _request(RainConfig())
    ses = VllmSession(backend, request, smollm2.request_ids(request), [], Totals())

    async def run():
        task = asyncio.ensure_future(ses.run(Grow((), (RowSpec(400, temperature=1.0),) * 4)))
        while len(ses._live) < 4:
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)
        await ses.aclose()
        with pytest.raises(SessionClosed):
            await asyncio.wait_for(task, 60)
        for _ in range(100):
            if backend.llm.get_num_unfinished_requests() == 0:
                break
            await asyncio.sleep(0.1)
        return backend.llm.get_num_unfinished_requests()

    assert loop.run_until_complete(run()) == 0


def test_a_decode_stream_closed_between_tokens_leaves_nothing_in_the_engine(smollm2, backend, loop):
    """A vanilla answer given up between two of its tokens (its client gone, its timeout reached): the engine,
    which runs ahead of the reader, has the stream's request aborted as the session closes."""
    request = GenerationRequest(MESSAGES, SamplingParams(max_new_tokens=400, seed=3))
    ses = VllmSession(backend, request, smollm2.request_ids(request), [], Totals())

    async def run():
        for _ in range(2):
            await ses.run(Decode())
        assert backend.llm.get_num_unfinished_requests() == 1  # the stream, 398 tokens from its end
        await ses.aclose()
        return backend.llm.get_num_unfinished_requests()

    assert loop.run_until_complete(run()) == 0


@pytest.mark.parametrize("temperature", [None, 0.7], ids=["greedy", "sampled"])
def test_vanilla_streams_one_generation(smollm2, backend, loop, temperature):
    request = GenerationRequest(MESSAGES, SamplingParams(max_new_tokens=12, seed=3, logprobs=3, temperature=temperature))
    answer = smollm2.new_answer(request)
    totals = Totals()
    ses = VllmSession(backend, request, smollm2.request_ids(request), [], totals)

    async def run():
        steps = drive(vanilla_tokens(request.params), ses)
        try:
            async for commit in steps:
                answer.commit(commit.token_ids, None, commit.logprobs)
                if commit.logprobs:
                    logprobs.extend(commit.logprobs)
                if answer.finish_reason:
                    break
        finally:
            await steps.aclose()
            await ses.aclose()

    logprobs = []
    loop.run_until_complete(run())
    want = [e for e in smollm2.events(request) if isinstance(e, Commit)]
    want_logprobs = [lp for c in want for lp in (c.logprobs or [])]
    want_ids = [t for c in want for t in c.token_ids]
    if temperature is None:
        assert answer.ids == want_ids
        assert totals.forward_calls == 1  # the Decodes of a vanilla answer read one streaming engine request
    # the log-probs are raw (the model's distribution), whatever the temperature
    ref = TransformersSession(smollm2.backend, request, smollm2.request_ids(request), make_generator(0, smollm2.backend.device), Totals(), [])
    try:
        got = [lp.logprob for lp in logprobs[: len(answer.ids)]]
        exact = [lp.logprob for lp in ref.run(Append(tuple(answer.ids), 3))]
    finally:
        ref.close()
    diff = max(abs(a - b) for a, b in zip(got, exact))
    print(f"vanilla {temperature}: {answer.text!r}, max |dlogprob| {diff:.2e}")
    assert diff < TOL and len(got) == len(answer.ids)
    if temperature is None:
        assert max(abs(a.logprob - b.logprob) for a, b in zip(logprobs, want_logprobs)) < TOL


def test_the_engine_binds_its_threads_to_the_given_cores(backend):
    """vLLM's own choice on x86 keeps a core per rank for its scheduler: on this 2-core machine the
    model's threads all sat on core 0. The backend binds them to the cores it is given (here, all):
    vLLM pins each OpenMP thread to one of them, so together they cover every given core."""
    import psutil

    from rain_core.backends.vllm.backend import cpu_binding

    cores = set(os.sched_getaffinity(0))
    workers = [p for p in psutil.Process().children(recursive=True) if p.name().startswith("VLLM::Worker")]
    assert len(workers) == 2  # the served model's engine and the judge's
    for worker in workers:
        pinned: set[int] = set()
        for thread in worker.threads():
            with contextlib.suppress(ProcessLookupError):  # a thread that ended since the listing
                pinned |= os.sched_getaffinity(thread.id)
        assert pinned == cores
    assert cpu_binding(EngineConfig(cpus=(0, 1)), tp=1) == "0,1"
    assert cpu_binding(EngineConfig(cpus=(2, 3, 4, 5)), tp=2) == "2,3|4,5"
    assert cpu_binding(EngineConfig(cpus=(0, 1)), tp=3) == "0|1|0"  # more ranks than cores share them
    assert cpu_binding(EngineConfig(threads=1), tp=1) == str(min(cores))


def test_engines_that_share_cores_wait_asleep(backend):
    """A --judge-model's engine runs on the served engine's cores, so the engines' OpenMP threads wait
    asleep (spinning ones take the cores from the other engine's working threads); one engine alone keeps
    OpenMP's default, and nothing of this reaches a GPU's engines. (The engines' own processes rename
    themselves over their /proc environ, so it is checked here, where it is decided.)"""
    from rain_core.backends.vllm.backend import engine_environment

    assert engine_environment(EngineConfig(judge_model=QWEN))["OMP_WAIT_POLICY"] == "PASSIVE"
    assert "OMP_WAIT_POLICY" not in engine_environment(EngineConfig())
    assert engine_environment(EngineConfig(judge_model=QWEN, device="cuda")) == {}
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"  # the backend above, with its judge, set it for its engines
