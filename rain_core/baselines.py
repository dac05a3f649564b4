"""The cheap baselines RAIN has to beat at equal cost, as strategies of `Engine.generate`.

Each yields what RAIN's search yields (token sets for the engine's Answer to commit, and SearchTicks
where the worker may interleave other requests or cancel this one) and fills the request's Judgment.
Both judge with the request's evaluation format on the request's judge, so their `self_evaluations`,
`forward_calls` and compute time count exactly what RAIN's do.

- self_check: a vanilla answer, then one judgment of the whole of it; at or below the threshold a
  fixed refusal replaces it. Streamed, no text may leave before it is judged, so the answer is judged
  sentence by sentence instead: a sentence is committed only once the answer up to its end has
  passed, and the first one that fails is replaced by the refusal (what was sent stays sent).
- best_of_n: n answers sampled side by side on the prompt's cache; the judge's best-scored one is
  returned (the first of them on a tie).
"""
from __future__ import annotations

from typing import Callable, Iterator, Optional

import torch

from .branches import RowSpec, grow_branches
from .config import REFUSAL_TEXT, GenerationRequest
from .events import Commit, Judgment, SearchTick, TokenLogprob, Totals
from .logprobs import maybe_logprobs
from .vanilla import vanilla_tokens

SENTENCE_ENDS = ".?!\n"  # streamed self_check judges the answer each time its text ends with one of these

Strategy = Callable[..., Iterator[object]]


def self_check(engine, request: GenerationRequest, cache: int, logits: torch.Tensor, generator: torch.Generator,
               totals: Totals, judgment: Judgment) -> Iterator[object]:
    """A vanilla answer, committed only after the judge has passed it (sentence by sentence when streamed)."""
    session = engine.evaluator(request.rain.evaluator, request.rain.judge).session(request.messages, totals)
    draft = engine.new_answer(request)  # what the client will have once the pending tokens are committed
    pending: list[int] = []
    pending_logprobs: Optional[list[TokenLogprob]] = None if request.params.logprobs is None else []
    sent = ""
    try:
        for proposal in vanilla_tokens(engine.runner, cache, logits, request.params, generator, totals):
            draft.commit(proposal.token_ids)
            pending += proposal.token_ids
            if pending_logprobs is not None:
                pending_logprobs += proposal.logprobs
            if not (draft.finish_reason or request.streamed and draft.text[-1:] in SENTENCE_ENDS and draft.text != sent):
                yield SearchTick(totals.iterations)  # a point to interleave or cancel between tokens
                continue
            value = session.evaluate(draft.text).value
            judgment.values.append(value)
            judgment.replaced = value <= judgment.threshold
            if judgment.replaced:
                yield Commit(refusal_ids(engine, sent), "")
                return
            yield Commit(pending, "", logprobs=pending_logprobs)
            pending, sent = [], draft.text
            pending_logprobs = None if pending_logprobs is None else []
    finally:
        session.close()


def refusal_ids(engine, sent: str) -> list[int]:
    """The refusal's tokens and an end-of-turn token, so the answer ends there with finish_reason stop;
    after text already sent it starts with a space."""
    text = REFUSAL_TEXT if not sent or sent[-1].isspace() else " " + REFUSAL_TEXT
    end = engine.tokenizer.eos_token_id if engine.tokenizer.eos_token_id in engine.end_ids else min(engine.end_ids)
    return engine.tokenizer(text, add_special_tokens=False).input_ids + [end]


def best_of_n(engine, request: GenerationRequest, cache: int, logits: torch.Tensor, generator: torch.Generator,
              totals: Totals, judgment: Judgment) -> Iterator[object]:
    """`best_of` sampled answers, grown side by side in one decode loop; the judge's favourite is committed."""
    cfg, params = request.rain, request.params
    prompt_len = engine.runner.cache_length(cache)
    row = RowSpec(params.max_new_tokens, temperature=cfg.candidate_temperature, top_p=cfg.candidate_top_p)
    try:
        branches = grow_branches(engine.runner, cache, logits, [row] * cfg.best_of, generator, engine.end_ids,
                                 lambda ids: False, totals)
    finally:
        engine.runner.truncate(cache, prompt_len)
    session = engine.evaluator(cfg.evaluator, cfg.judge).session(request.messages, totals)
    try:
        for branch in branches:
            draft = engine.new_answer(request)
            draft.commit(branch.tokens)  # judged as the client would receive it: cut at stops and limits
            judgment.values.append(session.evaluate(draft.text).value)
            yield SearchTick(totals.iterations)
    finally:
        session.close()
    judgment.chosen = max(range(len(branches)), key=lambda i: (judgment.values[i], -i))
    tokens = branches[judgment.chosen].tokens
    yield Commit(tokens, "", logprobs=_logprobs(engine, cache, logits, tokens, params.logprobs, totals))


def _logprobs(engine, cache: int, logits: torch.Tensor, tokens: list[int], top: Optional[int],
              totals: Totals) -> Optional[list[TokenLogprob]]:
    """The chosen answer's log-probabilities under the model (the rows were sampled at their own
    temperature), from one forward call of it on top of the prompt; none unless asked for."""
    if top is None:
        return None
    rows = engine.runner.forward(cache, torch.tensor(tokens), logits_at=torch.arange(len(tokens)), totals=totals)
    return maybe_logprobs(torch.cat([logits.view(1, -1), rows[:-1]]), tokens, top)


STRATEGIES: dict[str, Strategy] = {"self_check": self_check, "best_of_n": best_of_n}
