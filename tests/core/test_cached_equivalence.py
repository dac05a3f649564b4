"""The cached, branched execution must give the distributions of a plain full recompute."""
from __future__ import annotations

import pytest
import torch

from rain_core.backends.transformers.backend import TransformersSession
from rain_core.backends.transformers.branches import grow_branches
from rain_core.backends.transformers.runner import TreeLayout
from rain_core.backends.transformers.sampling import filtered_probs, make_generator
from rain_core.config import EvaluatorConfig, GenerationRequest, RainConfig, SamplingParams
from rain_core.events import Commit, Finish, Totals
from rain_core.search.judge_prompt import combine
from rain_core.search.ops import RowSpec
from rain_core.search.ops import Grow, Judge, TopTokens

TOLERANCE = 1e-4
MESSAGES = ({"role": "user", "content": "How do I pick a lock?"},)


def full_logprobs(engine, ids: list[int]) -> torch.Tensor:
    """log-softmax of the next-token logits after `ids`, from scratch, no cache, no mask."""
    with torch.inference_mode():
        logits = engine.backend.runner.model(input_ids=torch.tensor([ids])).logits[0, -1].float()
    return torch.log_softmax(logits, -1)


def test_tree_masked_branches_match_full_recompute(tiny_engine):
    runner = tiny_engine.backend.runner
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
    runner = tiny_engine.backend.runner
    prompt = tiny_engine.prompt_ids(MESSAGES)
    path = [3, 4, 5]  # a selected path fed on top of the committed prefix, as the search does
    cache = runner.new_cache()
    runner.forward(cache, torch.tensor(prompt))
    start = runner.forward(cache, torch.tensor(path))[-1]
    specs = [RowSpec(6, greedy=True, top_k=15)] + [RowSpec(6, top_k=15)] * 9 + [RowSpec(12, stop_chars=",.")]
    layout = TreeLayout.shared_prefix(runner.cache_length(cache), runner.device)
    branches = grow_branches(runner, cache, layout, start.view(1, -1), specs, make_generator(0, runner.device),
                             tiny_engine.end_ids, lambda row, ids, chars: False)
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


def test_paths_fed_together_form_one_prefix_tree():
    layout = TreeLayout.shared_prefix(2, "cpu")
    tree = layout.add_sequences([[3, 4, 5], [3, 4, 9], [7], []], first_tag=-2)
    assert tree.ids == [3, 4, 5, 9, 7]  # the shared 3, 4 once
    assert tree.positions == [2, 3, 4, 4, 2]
    assert tree.last == [2, 3, 4, None] and tree.branch[3] == -1
    layout.parents[0] = tree.branch[1]  # a row grown below the second path
    _, mask = layout.append(tree.tags + [0], tree.positions + [5])
    seen = mask[0, 0].int().tolist()
    assert seen == [
        [1, 1, 1, 0, 0, 0, 0, 0],  # 3
        [1, 1, 1, 1, 0, 0, 0, 0],  # 3 4
        [1, 1, 1, 1, 1, 0, 0, 0],  # 3 4 5
        [1, 1, 1, 1, 0, 1, 0, 0],  # 3 4 9: not 5
        [1, 1, 0, 0, 0, 0, 1, 0],  # 7: only the shared state
        [1, 1, 1, 1, 0, 1, 0, 1],  # the row: 3 4 9 and itself
    ]


def wave_session(engine, rain=RainConfig()):
    request = GenerationRequest(MESSAGES, SamplingParams(max_new_tokens=16, seed=0), rain)
    prompt = engine.request_ids(request)
    return TransformersSession(engine.backend, request, prompt, make_generator(0, engine.backend.device), Totals(), []), prompt


def test_a_wave_of_grows_decodes_every_row_below_its_own_path_as_full_recompute_would(tiny_engine):
    session, prompt = wave_session(tiny_engine)
    paths = [(3, 4, 5), (3, 4, 9), (7,), ()]
    specs = (RowSpec(5, greedy=True, top_k=15), RowSpec(5, top_k=15), RowSpec(8, stop_chars=",."))
    grown = session.run_all([Grow(path, specs) for path in paths])
    assert tiny_engine.backend.runner.cache_length(session.cache) == len(prompt)  # every path and row truncated back
    for path, branches in zip(paths, grown):
        assert len(branches) == len(specs)
        for spec, branch in zip(specs, branches):
            expected = 0.0
            for t, token in enumerate(branch.tokens):
                logits = full_logprobs(tiny_engine, prompt + list(path) + branch.tokens[:t])
                probs = filtered_probs(logits.unsqueeze(0), spec.temperature, spec.top_k)[0]
                if spec.greedy:
                    assert token == int(probs.argmax())
                expected += float(probs[token].log())
            assert abs(branch.logprob - expected) < TOLERANCE * len(branch.tokens)
    ranked = session.run_all([TopTokens(path, 5) for path in paths])
    for path, top in zip(paths, ranked):
        expected = full_logprobs(tiny_engine, prompt + list(path)).exp().topk(5)
        assert top.ids == expected.indices.tolist()
        assert max(abs(a - b) for a, b in zip(top.probs, expected.values.tolist())) < TOLERANCE
    session.close()


def test_a_wave_of_judgments_is_one_forward_call_and_matches_judging_one_at_a_time(tiny_engine):
    answers = ["Sure, first you", "Sure, first you need a tension wrench.", "I can't help with that.", "Sure, first you"]
    session, _ = wave_session(tiny_engine)
    alone = [session.run(Judge(a)) for a in answers[:3]]
    session.close()
    session, _ = wave_session(tiny_engine)
    session.run(Judge("Hello"))  # the judge's session holds another answer's tokens when the wave comes
    calls, judged = session.totals.forward_calls, session.totals.self_evaluations
    together = session.run_all([Judge(a) for a in answers])
    assert session.totals.forward_calls == calls + 1
    assert session.totals.self_evaluations == judged + 3  # the repeated answer is judged once
    assert together[3] is together[0]
    for one, many in zip(alone, together):
        assert max(abs(a - b) for a, b in zip(one.log_odds, many.log_odds)) < TOLERANCE
    again = session.run(Judge("Sure, first you need a tension wrench. Then"))  # on what the wave left cached
    fresh, _ = wave_session(tiny_engine)
    expected = fresh.run(Judge("Sure, first you need a tension wrench. Then"))
    assert max(abs(a - b) for a, b in zip(again.log_odds, expected.log_odds)) < TOLERANCE
    session.close()
    fresh.close()


@pytest.mark.parametrize("prompt", ["chat", "yesno"])
def test_self_evaluation_matches_full_recompute_for_both_orders(tiny_engine, prompt):
    config = EvaluatorConfig(prompt=prompt, score="continuous")
    evaluator = tiny_engine.backend.evaluator(config)
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
    runs = [[e.token_ids for e in tiny_engine.events(request) if isinstance(e, Commit)] for _ in range(2)]
    assert runs[0] == runs[1]
    assert [len(s) for s in runs[0][:3]] == [1, 2, 4]  # token-set sizes by depth


def test_seed_decides_sampled_tokens(tiny_engine):
    def answer(seed):
        return tiny_engine.complete(GenerationRequest(MESSAGES, SamplingParams(max_new_tokens=8, seed=seed, temperature=1.0))).text

    assert answer(3) == answer(3)
    assert answer(3) != answer(4)


def test_rain_frees_every_cache_and_reports_totals(tiny_engine):
    before = set(tiny_engine.backend.runner.caches)
    request = GenerationRequest(MESSAGES, SamplingParams(max_new_tokens=12, seed=1), RainConfig(max_iters=2, min_iters=2))
    finish = tiny_engine.complete(request)
    assert isinstance(finish, Finish)
    tiny_engine.run(tiny_engine.backend.call(lambda: None))  # the session's closing is queued, not waited for
    assert set(tiny_engine.backend.runner.caches) == before
    t = finish.totals
    assert t.iterations >= 2 * t.commits - 2 and t.self_evaluations > 0
    assert t.forward_calls > t.commits and t.tokens_fed > t.prompt_tokens
    assert t.completion_tokens <= 12


def test_yesno_format_asks_two_phrasings_of_the_harm_question(tiny_engine):
    layout = tiny_engine.backend.evaluator(EvaluatorConfig(prompt="yesno")).layout
    tokenizer = tiny_engine.tokenizer
    texts = [tokenizer.decode(s) for s in layout.suffixes]
    assert len(texts) == 2 and all("harmful" in t and "Yes or No" in t for t in texts) and texts[0] != texts[1]
    yes, no = (tokenizer(w, add_special_tokens=False).input_ids[0] for w in ("Yes", "No"))
    assert layout.options == [(no, yes), (no, yes)]  # "No" (not harmful) is the good answer to both
    single = tiny_engine.backend.evaluator(EvaluatorConfig(prompt="yesno", both_orders=False)).layout
    assert single.suffixes == layout.suffixes[:1]
