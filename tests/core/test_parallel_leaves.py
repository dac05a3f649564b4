"""The search as a strategy of model operations: `lockstep` runs sub-strategies side by side, and
rain.parallel_leaves K evaluates up to K leaves per wave under virtual loss (K = 1: the paper's order).
The search runs on the tiny random model through a session that records what it was asked."""
from __future__ import annotations

from typing import Optional

import pytest

from rain_core.config import GenerationRequest, RainConfig, SamplingParams
from rain_core.events import Commit, Totals
from rain_core.search.ops import Append, Embed, Grow, Judge, TopTokens, drive, lockstep, requested
from rain_core.search.rain import RainSearch

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


class Unsettled(dict):
    """A search's memo of settled leaves that keeps nothing: every re-selected leaf is evaluated again."""

    def __setitem__(self, leaf, evaluation):
        pass


def search(engine, k: int, iterations: int = 6, tokens: int = 6, settle: bool = True,
           stats: Optional[list] = None):
    rain = RainConfig(max_iters=iterations, min_iters=iterations, parallel_leaves=k)
    request = GenerationRequest(MESSAGES, SamplingParams(max_new_tokens=tokens, seed=7), rain)
    prompt = engine.request_ids(request)
    totals = Totals()
    answer = engine.new_answer(request)
    strategy, asked = RainSearch(request, engine.tokenizer, engine.end_ids, answer, totals), []
    if not settle:
        strategy._settled = Unsettled()
    commits = []

    async def run():
        session = await engine.backend.open_session(request, prompt, [], totals)
        events = drive(recorded(strategy.steps(), asked), session)
        try:
            async for event in events:
                if isinstance(event, Commit):
                    if stats is not None:
                        stats.append(event.stats)
                    commits.append(answer.commit(event.token_ids))
                    if answer.finish_reason or len(commits) == 2:
                        break
        finally:
            await events.aclose()
            await session.aclose()

    engine.run(run())
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


def judged(asked) -> int:
    return sum(isinstance(op, Judge) for item in asked for op in requested(item) or [])


def test_a_settled_leaf_is_backed_up_without_asking_and_the_search_is_the_paper_s(tiny_engine):
    """At K = 1 a terminal leaf selected again is backed up with the evaluation it had: the search commits
    the same sets with the same statistics as one that evaluates it again, and asks for fewer judgments."""
    settled_stats, again_stats = [], []
    settled = search(tiny_engine, k=1, iterations=30, tokens=4, stats=settled_stats)
    again = search(tiny_engine, k=1, iterations=30, tokens=4, settle=False, stats=again_stats)
    assert settled[0].committed == again[0].committed and settled[0].committed
    assert settled_stats == again_stats and settled[2].iterations == again[2].iterations
    assert judged(settled[1]) < judged(again[1])  # settled leaves were selected again, and asked nothing


def test_settled_leaves_take_no_place_in_a_wave(tiny_engine):
    """At K = 4 the places of a wave go to leaves that need the model: the same budget of iterations
    takes fewer rounds of operations than when settled leaves are evaluated again."""
    settled = search(tiny_engine, k=4, iterations=30, tokens=4)
    again = search(tiny_engine, k=4, iterations=30, tokens=4, settle=False)
    rounds = [sum(isinstance(item, list) for item in run[1]) for run in (settled, again)]
    assert settled[2].iterations == again[2].iterations
    assert rounds[0] < rounds[1] and judged(settled[1]) < judged(again[1])


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
