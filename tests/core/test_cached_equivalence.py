"""The cached, branched execution must give the distributions of a plain full recompute."""
from __future__ import annotations

import pytest
import torch

from rain_core.branches import RowSpec, grow_branches
from rain_core.config import EvaluatorConfig, GenerationRequest, RainConfig, SamplingParams
from rain_core.events import Commit, Finish
from rain_core.runner import TreeLayout
from rain_core.sampling import filtered_probs, make_generator
from rain_core.selfeval import combine

TOLERANCE = 1e-4
MESSAGES = ({"role": "user", "content": "How do I pick a lock?"},)


def full_logprobs(engine, ids: list[int]) -> torch.Tensor:
    """log-softmax of the next-token logits after `ids`, from scratch, no cache, no mask."""
    with torch.inference_mode():
        logits = engine.runner.model(input_ids=torch.tensor([ids])).logits[0, -1].float()
    return torch.log_softmax(logits, -1)


def test_tree_masked_branches_match_full_recompute(tiny_engine):
    runner = tiny_engine.runner
    prompt = tiny_engine.prompt_ids(MESSAGES)
    cache = runner.new_cache()
    runner.forward(cache, torch.tensor(prompt))
    branches = [[101, 202, 303], [404, 505], [606, 707, 808, 909]]
    layout = TreeLayout.shared_prefix(len(prompt), runner.device)
    for step in range(max(map(len, branches))):
        rows = [b for b in range(len(branches)) if step < len(branches[b])]
        position_ids, mask = layout.append(rows, [len(prompt) + step] * len(rows))
        ids = torch.tensor([branches[b][step] for b in rows])
        logits = runner.forward(cache, ids, position_ids, mask, torch.arange(len(rows)))
        for row, b in enumerate(rows):
            expected = full_logprobs(tiny_engine, prompt + branches[b][: step + 1])
            assert (torch.log_softmax(logits[row], -1) - expected).abs().max() < TOLERANCE
    runner.free_cache(cache)


def test_candidates_and_simulation_logprobs_match_full_recompute(tiny_engine):
    runner = tiny_engine.runner
    prompt = tiny_engine.prompt_ids(MESSAGES)
    path = [3, 4, 5]  # a selected path fed on top of the committed prefix, as the search does
    cache = runner.new_cache()
    runner.forward(cache, torch.tensor(prompt))
    start = runner.forward(cache, torch.tensor(path))[-1]
    specs = [RowSpec(6, greedy=True, top_k=15)] + [RowSpec(6, top_k=15)] * 9 + [RowSpec(12, stop_chars=",.")]
    branches = grow_branches(runner, cache, start, specs, make_generator(0, runner.device),
                             tiny_engine.end_ids, lambda ids, chars: False)
    assert runner.cache_length(cache) > len(prompt) + len(path)  # branches were appended side by side
    for spec, branch in zip(specs, branches):
        expected = 0.0
        for t, token in enumerate(branch.tokens):
            logits = full_logprobs(tiny_engine, prompt + path + branch.tokens[:t])
            probs = filtered_probs(logits.unsqueeze(0), spec.temperature, spec.top_k)[0]
            if spec.greedy:
                assert token == int(probs.argmax())
            expected += float(probs[token].log())
        assert abs(branch.logprob - expected) < TOLERANCE * len(branch.tokens)
    assert len({tuple(b.tokens) for b in branches[:10]}) > 1  # the sampled rows really sample
    runner.free_cache(cache)


@pytest.mark.parametrize("prompt", ["chat", "yesno"])
def test_self_evaluation_matches_full_recompute_for_both_orders(tiny_engine, prompt):
    config = EvaluatorConfig(prompt=prompt, score="continuous")
    evaluator = tiny_engine.evaluator(config)
    session = evaluator.session(MESSAGES)
    tokenizer = tiny_engine.tokenizer
    for answer in ["Sure, first you", "Sure, first you need a tension wrench.", "I can't help with that."]:
        result = session.evaluate(answer)  # the 2nd reuses the 1st's cache, the 3rd truncates it
        ids = evaluator.layout.fixed + session.conversation_ids + tokenizer(" " + answer, add_special_tokens=False).input_ids
        expected = []
        for suffix, (good, bad) in zip(evaluator.layout.suffixes, evaluator.layout.options):
            logprobs = full_logprobs(tiny_engine, ids + suffix)
            expected.append(float(logprobs[good] - logprobs[bad]))
        assert len(result.log_odds) == 2
        assert max(abs(a - b) for a, b in zip(result.log_odds, expected)) < TOLERANCE
        assert abs(result.value - combine(expected, "continuous")) < TOLERANCE
    session.close()


def test_seeded_rain_search_is_deterministic(tiny_engine):
    rain = RainConfig(max_iters=3, min_iters=3)
    request = GenerationRequest(MESSAGES, SamplingParams(max_new_tokens=20, seed=7), rain)
    runs = [[e.token_ids for e in tiny_engine.generate(request) if isinstance(e, Commit)] for _ in range(2)]
    assert runs[0] == runs[1]
    assert [len(s) for s in runs[0][:3]] == [1, 2, 4]  # token-set sizes by depth


def test_seed_decides_sampled_tokens(tiny_engine):
    def answer(seed):
        return tiny_engine.complete(GenerationRequest(MESSAGES, SamplingParams(max_new_tokens=8, seed=seed, temperature=1.0))).text

    assert answer(3) == answer(3)
    assert answer(3) != answer(4)


def test_rain_frees_every_cache_and_reports_totals(tiny_engine):
    before = set(tiny_engine.runner.caches)
    request = GenerationRequest(MESSAGES, SamplingParams(max_new_tokens=12, seed=1), RainConfig(max_iters=2, min_iters=2))
    finish = tiny_engine.complete(request)
    assert isinstance(finish, Finish)
    assert set(tiny_engine.runner.caches) == before
    t = finish.totals
    assert t.iterations >= 2 * t.commits - 2 and t.self_evaluations > 0
    assert t.forward_calls > t.commits and t.tokens_fed > t.prompt_tokens
    assert t.completion_tokens <= 12


def test_yesno_format_asks_two_phrasings_of_the_harm_question(tiny_engine):
    layout = tiny_engine.evaluator(EvaluatorConfig(prompt="yesno")).layout
    tokenizer = tiny_engine.tokenizer
    texts = [tokenizer.decode(s) for s in layout.suffixes]
    assert len(texts) == 2 and all("harmful" in t and "Yes or No" in t for t in texts) and texts[0] != texts[1]
    yes, no = (tokenizer(w, add_special_tokens=False).input_ids[0] for w in ("Yes", "No"))
    assert layout.options == [(no, yes), (no, yes)]  # "No" (not harmful) is the good answer to both
    single = tiny_engine.evaluator(EvaluatorConfig(prompt="yesno", both_orders=False)).layout
    assert single.suffixes == layout.suffixes[:1]
