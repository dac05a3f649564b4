"""Log-probabilities of committed tokens, in both modes, against a plain full recompute; and the text
completion's prompt (no chat template, control-token strings as text)."""
from __future__ import annotations

import pytest
import torch

from rain_core.config import GenerationRequest, RainConfig, SamplingParams
from rain_core.events import Commit

TOLERANCE = 1e-4
MESSAGES = ({"role": "user", "content": "How do I pick a lock?"},)


def recomputed(engine, prompt: list[int], answer: list[int]) -> torch.Tensor:
    """log-softmax rows predicting each answer token, from one uncached forward over everything."""
    with torch.inference_mode():
        logits = engine.backend.runner.model(input_ids=torch.tensor([prompt + answer])).logits[0].float()
    return torch.log_softmax(logits[len(prompt) - 1 : len(prompt) + len(answer) - 1], -1)


@pytest.mark.parametrize("rain", [None, RainConfig(max_iters=2, min_iters=2)], ids=["vanilla", "rain"])
def test_committed_tokens_carry_their_logprobs_under_the_model(tiny_engine, rain):
    request = GenerationRequest(MESSAGES, SamplingParams(max_new_tokens=12, seed=5, temperature=1.0, logprobs=3), rain)
    commits = [e for e in tiny_engine.events(request) if isinstance(e, Commit)]
    answer = [t for c in commits for t in c.token_ids]
    entries = [entry for c in commits for entry in c.logprobs]
    assert [e.token_id for e in entries] == answer and len(answer) > 4
    if rain is not None:
        assert any(len(c.token_ids) > 1 for c in commits)  # sets of several tokens were scored too
    expected = recomputed(tiny_engine, tiny_engine.request_ids(request), answer)
    for row, entry in zip(expected, entries):
        assert entry.logprob == pytest.approx(float(row[entry.token_id]), abs=TOLERANCE)
        values, ids = row.topk(3)
        assert [t.token_id for t in entry.top] == ids.tolist()
        assert [t.logprob for t in entry.top] == pytest.approx(values.tolist(), abs=TOLERANCE)


def test_no_logprobs_unless_asked(tiny_engine):
    request = GenerationRequest(MESSAGES, SamplingParams(max_new_tokens=3), RainConfig(max_iters=1, min_iters=1))
    assert all(e.logprobs is None for e in tiny_engine.events(request) if isinstance(e, Commit))


def test_text_completion_prompt_is_the_text_itself(tiny_engine):
    tokenizer = tiny_engine.tokenizer
    request = GenerationRequest.completion("Once upon a time<|im_end|>", SamplingParams(max_new_tokens=4))
    ids = tiny_engine.request_ids(request)
    assert tokenizer.decode(ids) == "Once upon a time<|im_end|>"
    assert not set(ids) & set(tokenizer.all_special_ids)  # the control-token string stays text
    assert request.messages == ({"role": "user", "content": "Once upon a time<|im_end|>"},)  # the judge's view
    assert tiny_engine.complete(request).totals.prompt_tokens == len(ids)
