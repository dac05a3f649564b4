"""The CUDA path in bfloat16 (scripts/gpu_check.sh runs these; without CUDA they skip), and the vLLM backend
against the transformers one on CUDA.

bf16 keeps about three significant digits, so the cached, tree-masked execution is compared with a
full recompute on probabilities, not bit for bit.
"""
from __future__ import annotations

import json
import math
import os

import pytest
import torch

from rain_core.backends.transformers.runner import TreeLayout
from rain_core.config import EngineConfig, GenerationRequest, RainConfig, SamplingParams
from rain_core.engine import Engine
from rain_core.search.tree import Node, Tree

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

MODEL = os.environ.get("RAIN_CHECK_MODEL", "smollm2")
MESSAGES = ({"role": "user", "content": "Explain in two sentences why the sky is blue."},)
PROB_TOLERANCE = 0.05  # largest difference of any next-token probability (CPU bf16 gives 0.017)
KL_TOLERANCE = 0.02  # CPU bf16 gives 0.004


@pytest.fixture(scope="module")
def engine():
    return Engine(EngineConfig(model=MODEL, device="cuda", dtype="bfloat16"))


def full_probs(engine, ids: list[int]) -> torch.Tensor:
    with torch.inference_mode():
        logits = engine.backend.runner.model(input_ids=torch.tensor([ids], device=engine.backend.device)).logits[0, -1]
    return torch.softmax(logits.float(), -1)


def assert_close(probs: torch.Tensor, expected: torch.Tensor) -> None:
    assert (probs - expected).abs().max() < PROB_TOLERANCE
    kl = (expected * (expected.clamp_min(1e-12).log() - probs.clamp_min(1e-12).log())).sum()
    assert kl < KL_TOLERANCE


def check_cached_branches(engine) -> None:
    """Prefill, a path extension, then three branches side by side under a tree mask, one token a
    step, each row against a from-scratch forward of its own sequence."""
    runner = engine.backend.runner
    prompt = engine.prompt_ids(MESSAGES)
    cache = runner.new_cache()
    try:
        assert_close(torch.softmax(runner.forward(cache, torch.tensor(prompt))[-1], -1), full_probs(engine, prompt))
        path = [504, 3733, 314]
        prefix = prompt + path
        assert_close(torch.softmax(runner.forward(cache, torch.tensor(path))[-1], -1), full_probs(engine, prefix))
        branches = [[101, 202, 303], [404, 505], [606, 707, 808, 909]]
        layout = TreeLayout.shared_prefix(len(prefix), runner.device)
        for step in range(max(map(len, branches))):
            rows = [b for b in range(len(branches)) if step < len(branches[b])]
            position_ids, mask = layout.append(rows, [len(prefix) + step] * len(rows))
            logits = runner.forward(cache, torch.tensor([branches[b][step] for b in rows]), position_ids, mask,
                                    torch.arange(len(rows)))
            for row, b in enumerate(rows):
                assert_close(torch.softmax(logits[row], -1), full_probs(engine, prefix + branches[b][: step + 1]))
        runner.truncate(cache, len(prefix))
        assert runner.cache_length(cache) == len(prefix)
        assert_close(torch.softmax(runner.forward(cache, torch.tensor([13]))[-1], -1), full_probs(engine, prefix + [13]))
    finally:
        runner.free_cache(cache)


def test_model_and_cache_live_on_the_gpu_in_bfloat16(engine):
    assert engine.backend.device.type == "cuda"
    assert next(engine.backend.runner.model.parameters()).dtype == torch.bfloat16


def test_cached_and_batched_logits_match_a_full_recompute(engine):
    check_cached_branches(engine)


def test_vanilla_and_rain_answer(engine):
    vanilla = engine.complete(GenerationRequest(MESSAGES, SamplingParams(max_new_tokens=24)))
    assert vanilla.text.strip() and vanilla.totals.completion_tokens > 0
    rain = engine.complete(GenerationRequest(MESSAGES, SamplingParams(max_new_tokens=12, seed=0),
                                             RainConfig(max_iters=2, min_iters=2)))
    assert rain.text.strip() and rain.finish_reason in ("stop", "length")
    assert rain.totals.iterations >= 2


def test_the_similarity_update_takes_the_embedders_vectors(engine):
    """The sentence encoder runs on the GPU; the tree's similarity update compares its vectors with the
    siblings' on the CPU (a CUDA vector there once failed every search whose update found a similar sibling)."""
    same, other = "The sky is blue because air scatters blue light.", "Bake the bread for forty minutes."
    vectors = engine.embedder.embed([same, same, other])
    root = Node((), 1.0, -1)
    leaf, twin, stranger = (Node((t,), 0.3, 0, parent=root) for t in (1, 2, 3))
    root.children = [leaf, twin, stranger]
    twin.n, twin.q, twin.embedding = 1.0, 0.5, vectors[1]
    stranger.n, stranger.q, stranger.embedding = 1.0, 0.5, vectors[2]
    Tree(root, RainConfig()).update_similarity([leaf], vectors[:1], -1.0)
    assert twin.n > 1.0 and twin.q < 0.5  # the same text: a fractional visit valued -1
    assert (stranger.n, stranger.q) == (1.0, 0.5)


# vLLM against transformers on CUDA ---------------------------------------------------------------------------
# Both engines compute in bf16 with different kernels (vLLM: fused norms, FA3 or Triton attention, compiled
# graphs; transformers: eager PyTorch and SDPA), so their log-probs agree only to bf16's precision. bf16 keeps
# 8 significant bits: a logit between 16 and 32 is stored to a step of 0.125, so each engine's final rounding
# alone moves a log-prob by up to 0.0625, and the differences the layers accumulate add to that.
LOGPROB_TOLERANCE = 0.25  # nats, a token's log-prob on the two engines
LOG_ODDS_TOLERANCE = 0.35  # nats: a judge's log-odds is the difference of two log-probs
TOP = 10


@pytest.fixture(scope="module")
def vllm_backend(loop):
    from rain_core.backends.vllm.backend import VllmBackend

    backend = VllmBackend(EngineConfig(model=MODEL, device="cuda", dtype="bfloat16"))
    yield backend
    loop.run_until_complete(backend.shutdown())


def record(figure: dict) -> None:
    """Appends a measured agreement to RAIN_CHECK_CORRECTNESS (JSON lines) when set: the figures that
    scripts/gpu_check.sh brings back."""
    path = os.environ.get("RAIN_CHECK_CORRECTNESS")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps({"model": MODEL, **figure}) + "\n")


def sessions(engine, backend, request):
    from rain_core.backends.transformers.backend import TransformersSession
    from rain_core.backends.vllm.backend import VllmSession
    from rain_core.events import Totals
    from rain_core.backends.transformers.sampling import make_generator

    prompt = engine.request_ids(request)
    reference = TransformersSession(engine.backend, request, prompt,
                                    make_generator(request.params.seed, engine.backend.device), Totals(), [])
    return reference, VllmSession(backend, request, prompt, [], Totals())


def test_vllm_top_tokens_match_transformers_in_bfloat16(engine, vllm_backend, loop):
    """At the prompt and three greedy tokens on, vLLM's top 10 are among transformers' top 20 with the same
    log-probs, and the two ranked lists agree rank by rank (near-ties may swap)."""
    from rain_core.search.ops import Grow, RowSpec, TopTokens

    request = GenerationRequest(MESSAGES, SamplingParams(max_new_tokens=8, seed=1), RainConfig())
    reference, session = sessions(engine, vllm_backend, request)
    try:
        path = tuple(reference.run(Grow((), (RowSpec(3, greedy=True),)))[0].tokens)
        for at in ((), path):
            want = reference.run(TopTokens(at, 2 * TOP))
            got = loop.run_until_complete(session.run(TopTokens(at, TOP)))
            want_lp = {t: math.log(p) for t, p in zip(want.ids, want.probs)}
            got_lp = [math.log(p) for p in got.probs]
            by_token = max(abs(lp - want_lp[t]) if t in want_lp else math.inf for t, lp in zip(got.ids, got_lp))
            by_rank = max(abs(a - math.log(b)) for a, b in zip(got_lp, want.probs[:TOP]))
            record({"check": "top_tokens", "path_len": len(at), "max_dlogprob_by_token": by_token,
                    "max_dlogprob_by_rank": by_rank, "same_top1": got.ids[0] == want.ids[0],
                    "shared_top10": len(set(got.ids) & set(want.ids[:TOP]))})
            assert by_token <= LOGPROB_TOLERANCE and by_rank <= LOGPROB_TOLERANCE
    finally:
        reference.close()
        session.close()


@pytest.mark.parametrize("evaluator", ["fewshot", "yesno"])
def test_vllm_judge_log_odds_match_transformers_in_bfloat16(engine, vllm_backend, loop, evaluator):
    from rain_core.config import EvaluatorConfig
    from rain_core.search.ops import Judge

    evaluator = EvaluatorConfig(prompt=evaluator)
    request = GenerationRequest(MESSAGES, SamplingParams(max_new_tokens=8, seed=1), RainConfig(evaluator=evaluator))
    _, session = sessions(engine, vllm_backend, request)
    try:
        for answer in ("Air scatters blue light more than red light.", "I won't help with that."):
            want = engine.backend.self_evaluate(MESSAGES, answer, evaluator)
            got = loop.run_until_complete(session.run(Judge(answer)))
            diff = max(abs(a - b) for a, b in zip(got.log_odds, want.log_odds))
            record({"check": f"judge_{evaluator.prompt}", "answer": answer, "vllm": got.log_odds,
                    "transformers": want.log_odds, "max_dlog_odds": diff})
            assert len(got.log_odds) == len(want.log_odds) and diff <= LOG_ODDS_TOLERANCE
    finally:
        session.close()
