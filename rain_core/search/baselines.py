"""The cheap baselines RAIN has to beat at equal cost, as strategies of `Engine.generate`.

Each yields what RAIN's search yields (token sets for the engine's Answer to commit, and SearchTicks
where the worker may interleave other requests or cancel this one) and fills the request's Judgment.
Both judge with the request's evaluation format on the request's judge, so their `self_evaluations`,
`forward_calls` and compute time count exactly what RAIN's do.

- self_check: a vanilla answer, then one judgment of the whole of it; at or below the threshold a
  fixed refusal replaces it. Streamed, no text may leave before it is judged, so the answer is judged
  sentence by sentence instead: a sentence is committed only once the answer up to its end has
  passed, and the first one that fails is replaced by the refusal (what was sent stays sent).
- best_of_n: n answers sampled side by side on the prompt's cache and judged together; the judge's
  best-scored one is returned (the first of them on a tie).
"""
from __future__ import annotations

from typing import Callable, Optional

from rain_core.chat.answer import Vocabulary
from rain_core.config import REFUSAL_TEXT, GenerationRequest
from rain_core.events import Commit, Judgment, SearchTick, TokenLogprob, Totals
from rain_core.search.ops import Append, Decode, Grow, Judge, RowSpec, Steps

SENTENCE_ENDS = ".?!\n"  # streamed self_check judges the answer each time its text ends with one of these

StrategyFactory = Callable[[Vocabulary, GenerationRequest, Totals, Judgment], Steps]


def self_check(vocab: Vocabulary, request: GenerationRequest, totals: Totals, judgment: Judgment) -> Steps:
    """A vanilla answer, committed only after the judge has passed it (sentence by sentence when streamed)."""
    params = request.params
    draft = vocab.answer(params)  # what the client will have once the pending tokens are committed
    pending: list[int] = []
    pending_logprobs: Optional[list[TokenLogprob]] = None if params.logprobs is None else []
    sent = ""
    decode = Decode(params.temperature, params.top_p or 1.0, params.logprobs)
    while True:
        decoded = yield decode
        draft.commit([decoded.token])
        pending.append(decoded.token)
        if pending_logprobs is not None:
            pending_logprobs += decoded.logprobs
        if not (draft.finish_reason or request.streamed and draft.text[-1:] in SENTENCE_ENDS and draft.text != sent):
            yield SearchTick(totals.iterations)  # a point to interleave or cancel between tokens
            continue
        value = (yield Judge(draft.text)).value
        judgment.values.append(value)
        judgment.replaced = value <= judgment.threshold
        if judgment.replaced:
            yield Commit(refusal_ids(vocab, sent), "")
            return
        yield Commit(pending, "", logprobs=pending_logprobs)
        pending, sent = [], draft.text
        pending_logprobs = None if pending_logprobs is None else []


def refusal_ids(vocab: Vocabulary, sent: str) -> list[int]:
    """The refusal's tokens and an end-of-turn token, so the answer ends there with finish_reason stop;
    after text already sent it starts with a space."""
    text = REFUSAL_TEXT if not sent or sent[-1].isspace() else " " + REFUSAL_TEXT
    return vocab.ids(text) + [vocab.end_id]


def best_of_n(vocab: Vocabulary, request: GenerationRequest, totals: Totals, judgment: Judgment) -> Steps:
    """`best_of` sampled answers, grown side by side in one decode loop; the judge's favourite is committed."""
    cfg, params = request.rain, request.params
    row = RowSpec(params.max_new_tokens, temperature=cfg.candidate_temperature, top_p=cfg.candidate_top_p)
    branches = yield Grow((), (row,) * cfg.best_of)
    verdicts = yield [Judge(client_text(vocab, request, branch.tokens)) for branch in branches]
    judgment.values.extend(verdict.value for verdict in verdicts)
    yield SearchTick(totals.iterations)
    judgment.chosen = max(range(len(branches)), key=lambda i: (judgment.values[i], -i))
    tokens = branches[judgment.chosen].tokens
    # the rows were sampled at their own temperature: the log-probabilities under the model come
    # from feeding the chosen answer, which only a request that asks for them pays for
    logprobs = (yield Append(tuple(tokens), params.logprobs)) if params.logprobs is not None else None
    yield Commit(tokens, "", logprobs=logprobs)


def client_text(vocab: Vocabulary, request: GenerationRequest, tokens: list[int]) -> str:
    """The text a client would receive for `tokens`: cut at stops and limits, as it is judged."""
    draft = vocab.answer(request.params)
    draft.commit(tokens)
    return draft.text


STRATEGIES: dict[str, StrategyFactory] = {"self_check": self_check, "best_of_n": best_of_n}
