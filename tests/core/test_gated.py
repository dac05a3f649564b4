"""Gated RAIN (rain_core/search/gated.py) on the real SmolLM2, greedy. A scripted judge drives the mechanics, so
which sentence fails is known in advance: it values an answer by its text, and every other operation runs
on the model. The moon question's greedy answer is three sentences in 48 tokens (checked below)."""
from __future__ import annotations

from typing import Callable

import pytest

from rain_core.config import REFUSAL_TEXT, GenerationRequest, RainConfig, Resume, SamplingParams
from rain_core.events import Commit, Finish, Totals
from rain_core.events import GatedJudgment
from rain_core.search.baselines import SENTENCE_ENDS
from rain_core.search.gated import gated
from rain_core.search.ops import Judge, Verdict, drive

QUESTION = ({"role": "user", "content": "Tell me about the moon."},)
THRESHOLD = 0.0
PASS, FAIL = 0.5, -0.5
# a small search, so that a flagged sentence costs seconds: the mechanics, not the search's strength
SEARCH = dict(max_iters=3, min_iters=1, simulation_max_tokens=6, gated_search_budget=6)


class ScriptedJudge:
    """A session whose Judge operations are answered by `verdict(answer text)`; the rest run on the model."""

    def __init__(self, session, verdict: Callable[[str], float]):
        self.session, self.verdict = session, verdict
        self.judged: list[str] = []

    async def run_all(self, ops):
        model_ops = [op for op in ops if not isinstance(op, Judge)]
        done = iter(await self.session.run_all(model_ops) if model_ops else [])
        results = []
        for op in ops:
            if isinstance(op, Judge):
                self.judged.append(op.answer)
                results.append(Verdict(self.verdict(op.answer), []))
            else:
                results.append(next(done))
        return results

    async def aclose(self):
        await self.session.aclose()


def run_gated(engine, verdict, streamed=False, max_new_tokens=48, **knobs):
    """The gated strategy driven as the engine drives a strategy (until the engine dispatches it): its
    commits into the client's answer. Returns the client's commits, the answer, the judgment, the texts
    judged and the totals."""
    request = GenerationRequest(QUESTION, SamplingParams(max_new_tokens=max_new_tokens, seed=0),
                                RainConfig().with_overrides(**{**SEARCH, **knobs}), streamed=streamed)
    prompt = engine.request_ids(request)
    answer, totals = engine.new_answer(request), Totals(prompt_tokens=len(prompt))
    judgment = GatedJudgment("gated", "self", THRESHOLD)

    async def run():
        judge = ScriptedJudge(await engine.backend.open_session(request, prompt, [], totals), verdict)
        commits = []
        steps = drive(gated(engine.vocab, request, totals, judgment), judge)
        try:
            async for event in steps:
                assert not isinstance(event, Finish)
                if isinstance(event, Commit):
                    commits.append(answer.commit(event.token_ids, event.stats, event.logprobs))
                    if answer.finish_reason:
                        break
        finally:
            await steps.aclose()
            await judge.aclose()
        return commits, judge.judged

    commits, judged = engine.run(run())
    return commits, answer, judgment, judged, totals


def vanilla(engine, max_new_tokens=48, resume=None):
    request = GenerationRequest(QUESTION, SamplingParams(max_new_tokens=max_new_tokens, seed=0), resume=resume)
    return engine.complete(request)


def sentences(text: str) -> list[str]:
    """`text` cut after each sentence end, as the gated strategy cuts a vanilla answer."""
    out, start = [], 0
    for i, c in enumerate(text):
        if c in SENTENCE_ENDS:
            out.append(text[start:i + 1])
            start = i + 1
    return out + ([text[start:]] if start < len(text) else [])


@pytest.fixture(scope="module")
def greedy(smollm2):
    text = vanilla(smollm2).text
    assert len(sentences(text)) == 3, text
    return text


def fails_on(sentence: str) -> Callable[[str], float]:
    """A judge that objects to any answer holding `sentence`, and to nothing else."""
    return lambda text: FAIL if sentence.strip() in text else PASS


def test_an_answer_whose_sentences_all_pass_is_vanillas_token_for_token(smollm2, greedy):
    commits, answer, judgment, judged, totals = run_gated(smollm2, lambda text: PASS)
    assert answer.text == greedy
    assert [c.text for c in commits] == sentences(greedy)  # one commit per sentence, each judged before it left
    assert judged == [greedy[:len("".join(sentences(greedy)[:i + 1]))] for i in range(3)]
    assert judgment.outcome == "passed" and totals.iterations == 0
    assert [(s.searched, s.replaced, s.value) for s in judgment.sentences] == [(False, False, PASS)] * 3


def test_a_flagged_sentence_never_reaches_the_client_streamed_or_not(smollm2, greedy):
    first, second, _ = sentences(greedy)
    for streamed in (False, True):
        commits, answer, judgment, judged, totals = run_gated(smollm2, fails_on(second), streamed)
        assert second.strip() not in answer.text and all(second.strip() not in c.text for c in commits)
        assert commits[0].text == first and judged[1] == first + second  # withdrawn after it was judged
        assert judgment.sentences[1].flagged_value == FAIL and judgment.sentences[1].searched


def fails_once(answer: str) -> Callable[[str], float]:
    """A judge that objects to `answer` the first time it sees it, and to nothing else. (One that objects to a
    sentence wherever it appears may see vanilla decoding write it again after a short searched segment.)"""
    seen = []

    def verdict(text: str) -> float:
        if text == answer and not seen:
            seen.append(text)
            return FAIL
        return PASS
    return verdict


def test_a_searched_segment_that_passes_is_sent_and_vanilla_resumes(smollm2, greedy):
    first, second, _ = sentences(greedy)
    commits, answer, judgment, _, totals = run_gated(smollm2, fails_once(first + second))
    assert judgment.outcome == "rewritten" and not judgment.replaced and totals.iterations > 0
    rewritten = judgment.sentences[1]
    assert (rewritten.searched, rewritten.replaced, rewritten.value) == (True, True, PASS)
    assert commits[1].text == rewritten.text and commits[1].stats is None
    # what follows the searched segment is vanilla decoding from the answer so far
    resumed = vanilla(smollm2, resume=Resume((tuple(commits[0].token_ids), tuple(commits[1].token_ids))))
    assert answer.text == resumed.text and len(commits) > 2
    assert all(not s.searched for s in judgment.sentences[2:])


def test_a_search_that_fails_ends_the_answer_with_the_refusal(smollm2, greedy):
    first = sentences(greedy)[0]
    commits, answer, judgment, judged, totals = run_gated(smollm2, lambda text: PASS if len(text) <= len(first) else FAIL)
    assert answer.text == first + " " + REFUSAL_TEXT and answer.finish_reason == "stop"
    assert judgment.outcome == "refused" and judgment.replaced and totals.iterations > 0
    refused = judgment.sentences[-1]
    assert (refused.searched, refused.replaced, refused.value, refused.flagged_value) == (True, True, FAIL, FAIL)


def test_without_a_search_budget_a_flagged_sentence_is_refused_at_once(smollm2, greedy):
    first, second, _ = sentences(greedy)
    commits, answer, judgment, _, totals = run_gated(smollm2, fails_on(second), gated_search_budget=0)
    assert answer.text == first + " " + REFUSAL_TEXT and totals.iterations == 0
    assert judgment.sentences[-1].searched is False and judgment.outcome == "refused"


def test_front_loading_makes_the_first_token_sets_the_searchs_then_vanilla_follows(smollm2):
    commits, answer, judgment, _, totals = run_gated(smollm2, lambda text: PASS, max_new_tokens=12, gated_front_load=2)
    first = judgment.sentences[0]
    assert (first.searched, first.replaced, first.flagged_value) == (True, False, None) and totals.iterations > 0
    assert judgment.outcome == "rewritten" and commits[0].text == first.text and judgment.values[0] == PASS
    assert len(commits[0].token_ids) == 1 + 2  # the search's first two sets: one token, then two (RainConfig.set_sizes)
    resumed = vanilla(smollm2, max_new_tokens=12, resume=Resume((tuple(commits[0].token_ids),)))
    assert answer.text == resumed.text
