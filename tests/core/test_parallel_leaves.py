"""The search as a strategy of model operations: `lockstep` runs sub-strategies side by side, and
rain.parallel_leaves K evaluates up to K leaves per wave under virtual loss (K = 1: the paper's order).
The search runs on the tiny random model through a session that records what it was asked."""
from __future__ import annotations

import pytest

from rain_core.backends.transformers import TransformersSession
from rain_core.config import GenerationRequest, RainConfig, SamplingParams
from rain_core.events import Commit, Totals
from rain_core.ops import Append, Embed, Grow, Judge, TopTokens, drive, lockstep
from rain_core.sampling import make_generator
from rain_core.search import RainSearch

MESSAGES = ({"role": "user", "content": "Tell me about owls."},)


def counter(name: str, steps: int):
    """A sub-strategy that asks for `steps` operations (here: plain strings) and returns what it got."""
    got = []
    for i in range(steps):
        got.append((yield f"{name}{i}"))
    return got


def test_lockstep_gathers_one_operation_of_each_running_strategy_per_round():
    runner = lockstep([counter("a", 2), counter("b", 3), counter("c", 0)])
    rounds, answer = [], None
    try:
        while True:
            ops = runner.send(answer)
            rounds.append(ops)
            answer = [op.upper() for op in ops]
    except StopIteration as stop:
        results = stop.value
    assert rounds == [["a0", "b0"], ["a1", "b1"], ["b2"]]
    assert results == [["A0", "A1"], ["B0", "B1", "B2"], []]


def recorded(strategy, asked: list):
    """The strategy, keeping everything it yields: an operation, a list of them, or an event."""
    result = None
    try:
        while True:
            try:
                item = strategy.send(result)
            except StopIteration:
                return
            asked.append(item)
            result = yield item
    finally:
        strategy.close()


def search(engine, k: int, iterations: int = 6, tokens: int = 6):
    rain = RainConfig(max_iters=iterations, min_iters=iterations, parallel_leaves=k)
    request = GenerationRequest(MESSAGES, SamplingParams(max_new_tokens=tokens, seed=7), rain)
    prompt = engine.request_ids(request)
    totals = Totals()
    answer = engine.new_answer(request)
    session = TransformersSession(engine, request, prompt, make_generator(7, engine.device), totals, [])
    strategy, asked = RainSearch(request, engine.tokenizer, engine.end_ids, answer, totals), []
    events = drive(recorded(strategy.steps(), asked), session)
    commits = []
    try:
        for event in events:
            if isinstance(event, Commit):
                commits.append(answer.commit(event.token_ids))
                if answer.finish_reason or len(commits) == 2:
                    break
    finally:
        events.close()
        session.close()
    return strategy, asked, totals, len(commits)


def waves(asked) -> list[int]:
    """How many leaves each wave evaluated: the widest list of operations between two commits' Appends."""
    sizes, widest = [], 0
    for item in asked:
        if isinstance(item, Append):
            sizes.append(widest)
            widest = 0
        elif isinstance(item, list):
            widest = max(widest, len(item))
    return sizes


def test_one_leaf_per_wave_asks_for_the_paper_s_operations_one_at_a_time(tiny_engine):
    strategy, asked, totals, commits = search(tiny_engine, k=1)
    lists = [item for item in asked if isinstance(item, list)]
    assert lists and all(len(ops) == 1 for ops in lists)  # every wave holds exactly one leaf
    kinds = {type(op) for ops in lists for op in ops}
    assert Judge in kinds and kinds <= {Grow, TopTokens, Judge, Embed}
    assert totals.iterations == 6 * commits


def test_four_leaves_per_wave_are_evaluated_together_and_released(tiny_engine):
    strategy, asked, totals, _ = search(tiny_engine, k=4, iterations=8)
    assert max(waves(asked)) > 1  # some wave had several distinct leaves in flight at once
    judged = [op for ops in asked if isinstance(ops, list) for op in ops if isinstance(op, Judge)]
    assert len(judged) >= totals.iterations - 2  # about one judgment per leaf (identical texts are memoised)
    tree = strategy.tree
    stack = [tree.root]
    while stack:  # nothing stays in flight once the waves are back
        node = stack.pop()
        assert node.in_flight == 0
        stack.extend(node.children)


def test_a_wave_never_evaluates_the_same_leaf_twice(tiny_engine):
    """At the first iteration the root is the only leaf: a wave of 4 evaluates it once."""
    _, asked, totals, _ = search(tiny_engine, k=4, iterations=1, tokens=1)
    first = next(item for item in asked if isinstance(item, list))
    assert len(first) == 1
    assert totals.iterations == 1


@pytest.mark.parametrize("k", [1, 3])
def test_seeded_searches_repeat_at_any_k(tiny_engine, k):
    first = search(tiny_engine, k=k)
    second = search(tiny_engine, k=k)
    assert [type(x).__name__ for x in first[1]] == [type(x).__name__ for x in second[1]]
    assert first[0].committed == second[0].committed and first[0].committed
