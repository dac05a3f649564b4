"""A generation resumed from committed sets continues the same answer (real SmolLM2): what the
client was sent is never repeated, and limits, stop sequences and RAIN's set sizes go on as if
the first engine had not died."""
from __future__ import annotations

import pytest

from rain_core.config import GenerationRequest, RainConfig, Resume, SamplingParams
from rain_core.events import Commit, Finish

pytestmark = pytest.mark.slow
ASK = ({"role": "user", "content": "List the planets of the solar system, one per line."},)


def run(engine, request: GenerationRequest) -> tuple[list[Commit], Finish]:
    events = list(engine.events(request))
    return [e for e in events if isinstance(e, Commit)], events[-1]


def resumed(request: GenerationRequest, commits: list[Commit]) -> GenerationRequest:
    sets = tuple(tuple(c.token_ids) for c in commits)
    return GenerationRequest(request.messages, request.params, request.rain, Resume(sets))


def test_greedy_decoding_resumed_anywhere_gives_the_uninterrupted_answer(smollm2):
    plain = GenerationRequest(ASK, SamplingParams(max_new_tokens=40))
    _, unstopped = run(smollm2, plain)
    stop = unstopped.text.split()[-3]  # a word late in the answer, so the stop matcher holds text back
    request = GenerationRequest(ASK, SamplingParams(max_new_tokens=40, stop=(stop,)))
    commits, whole = run(smollm2, request)
    assert whole.finish_reason == "stop" and stop not in whole.text
    for cut in (1, len(commits) // 2, len(commits) - 1):
        sent = "".join(c.text for c in commits[:cut])
        rest, finish = run(smollm2, resumed(request, commits[:cut]))
        assert sent + "".join(c.text for c in rest) == whole.text == finish.text
        assert finish.finish_reason == "stop"
        assert finish.totals.completion_tokens == whole.totals.completion_tokens
        assert finish.totals.commits == whole.totals.commits


def test_length_limit_counts_the_resumed_prefix(smollm2):
    request = GenerationRequest(ASK, SamplingParams(max_new_tokens=12))
    commits, whole = run(smollm2, request)
    rest, finish = run(smollm2, resumed(request, commits[:5]))
    assert len(rest) == 7 and finish.finish_reason == "length" and finish.text == whole.text


def test_rain_resumes_at_the_answer_depth(smollm2):
    request = GenerationRequest(ASK, SamplingParams(max_new_tokens=40, seed=0), RainConfig(max_iters=2, min_iters=2))
    commits, _ = run(smollm2, request)
    assert [len(c.token_ids) for c in commits[:2]] == [1, 2]
    rest, finish = run(smollm2, resumed(request, commits[:2]))
    assert [len(c.token_ids) for c in rest[:2]] == [4, 10]  # depth 2, then 3: not a fresh answer's 1, 2
    sent = "".join(c.text for c in commits[:2])
    assert finish.text == sent + "".join(c.text for c in rest) and finish.text.startswith(sent)
    assert finish.totals.commits == 2 + len(rest)
    assert finish.totals.completion_tokens == 3 + sum(len(c.token_ids) for c in rest)
    assert finish.totals.iterations == sum(c.stats.iterations for c in rest)  # this engine's search only

