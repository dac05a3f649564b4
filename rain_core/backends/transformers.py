"""The reference backend: one request's operations, executed in order on a KV cache of the model.

The state (prompt plus committed sets) lives in one cache that only grows. An operation on a path
feeds the path on top of it, works there (candidate and simulation rows side by side as branches of
the same cache) and truncates it back, so every operation starts from the committed state and a
seeded request is reproducible whatever ran before it. The logits at the last few states are kept,
so asking for the distribution at the state a `Grow` just started from costs nothing.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Optional

import torch

from ..branches import Branch, ends_with_any, grow_branches
from ..events import TokenLogprob, Totals
from ..logprobs import maybe_logprobs
from ..ops import Append, Decode, Decoded, Embed, Grow, Judge, Op, Ranked, Result, TopTokens
from ..sampling import sample

STATE_LOGITS_KEPT = 8  # paths whose next-token logits stay at hand until the next commit


class TransformersSession:
    def __init__(self, engine, request, state: list[int], generator: torch.Generator, totals: Totals,
                 committed: list[int]):
        """`state`: the ids fed before the first operation (prompt plus a resumed answer's ids);
        `committed`: the answer's ids so far, whose text ends a clause or not."""
        self.engine, self.request, self.totals = engine, request, totals
        self.runner, self.generator = engine.runner, generator
        self.committed = list(committed)
        self.cache = self.runner.new_cache()
        self._evaluation = None
        self._pending: Optional[int] = None  # a decoded token not fed yet: fed when the state is next needed
        self.root_logits = self.runner.forward(self.cache, torch.tensor(state), totals=totals)[-1]
        self.committed_len = len(state)
        self._state_logits: OrderedDict[tuple[int, ...], torch.Tensor] = OrderedDict()

    def close(self) -> None:
        self.runner.free_cache(self.cache)
        if self._evaluation is not None:
            self._evaluation.close()

    def run(self, op: Op) -> Result:
        if isinstance(op, TopTokens):
            return self._top_tokens(op)
        if isinstance(op, Grow):
            return self._grow(op)
        if isinstance(op, Judge):
            return self._judge(op)
        if isinstance(op, Embed):
            return self.engine.embedder.embed(list(op.texts))
        if isinstance(op, Append):
            return self._append(op)
        if isinstance(op, Decode):
            return self._decode(op)
        raise TypeError(f"not a model operation: {op!r}")

    # operations --------------------------------------------------------------------------------
    def _top_tokens(self, op: TopTokens) -> Ranked:
        logits = self._logits_at(op.path)
        probs, ids = torch.softmax(logits, -1).topk(op.k)
        return Ranked(ids.tolist(), probs.tolist())

    def _grow(self, op: Grow) -> list[Branch]:
        if not op.rows:
            return []
        before = self.committed + list(op.path)
        try:
            logits = self._feed_path(op.path)
            return grow_branches(self.runner, self.cache, logits, list(op.rows), self.generator,
                                 self.engine.end_ids,
                                 lambda ids, chars: ends_with_any(self.engine.tokenizer, before + ids, chars),
                                 self.totals)
        finally:
            self.runner.truncate(self.cache, self.committed_len)

    def _judge(self, op: Judge):
        if self._evaluation is None:
            rain = self.request.rain
            self._evaluation = self.engine.evaluator(rain.evaluator, rain.judge).session(self.request.messages,
                                                                                         self.totals)
        return self._evaluation.evaluate(op.answer)

    def _append(self, op: Append) -> Optional[list[TokenLogprob]]:
        self._flush_pending()
        self.runner.truncate(self.cache, self.committed_len)
        tokens = list(op.tokens)
        logits = self.runner.forward(self.cache, torch.tensor(tokens), logits_at=torch.arange(len(tokens)),
                                     totals=self.totals)
        # row i of the set's forward predicts token i + 1; the first token was drawn at the old state
        logprobs = maybe_logprobs(torch.cat([self.root_logits.view(1, -1), logits[:-1]]), tokens, op.top_logprobs)
        self.root_logits = logits[-1]
        self.committed_len += len(tokens)
        self.committed.extend(tokens)
        self._state_logits.clear()
        return logprobs

    def _decode(self, op: Decode) -> Decoded:
        self._flush_pending()
        logits = self.root_logits
        token = int(sample(logits, self.generator, op.temperature, top_p=op.top_p))
        self._pending = token
        return Decoded(token, maybe_logprobs(logits.view(1, -1), [token], op.top_logprobs))

    # the state ---------------------------------------------------------------------------------
    def _flush_pending(self) -> None:
        if self._pending is not None:
            token, self._pending = self._pending, None
            self.root_logits = self.runner.forward(self.cache, torch.tensor([[token]]), totals=self.totals).view(-1)
            self.committed_len += 1
            self.committed.append(token)

    def _logits_at(self, path: tuple[int, ...]) -> torch.Tensor:
        """Next-token logits after the state plus `path`, fed (and truncated back) unless at hand."""
        if not path:
            return self.root_logits
        if path in self._state_logits:
            return self._state_logits[path]
        try:
            return self._feed_path(path)
        finally:
            self.runner.truncate(self.cache, self.committed_len)

    def _feed_path(self, path: tuple[int, ...]) -> torch.Tensor:
        """Feed `path` on top of the state, leaving it in the cache; its next-token logits."""
        self._flush_pending()
        if not path:
            return self.root_logits
        logits = self.runner.forward(self.cache, torch.tensor(path), totals=self.totals)[-1]
        self._state_logits[path] = logits
        if len(self._state_logits) > STATE_LOGITS_KEPT:
            self._state_logits.popitem(last=False)
        return logits
