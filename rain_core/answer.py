"""The answer under construction: committed ids, text deltas, and when it must end."""
from __future__ import annotations

from typing import Optional

from .config import Resume
from .events import Commit, CommitStats, FinishReason, TokenLogprob
from .text import IncrementalDecoder, StopMatcher


class Answer:
    def __init__(self, tokenizer, end_ids: frozenset[int], stops: tuple[str, ...], max_new_tokens: int):
        self.end_ids = end_ids
        self.max_new_tokens = max_new_tokens
        self.ids: list[int] = []
        self.text = ""
        self.finish_reason: Optional[FinishReason] = None
        self._decoder = IncrementalDecoder(tokenizer)
        self._stops = StopMatcher(stops)

    @property
    def remaining(self) -> int:
        return self.max_new_tokens - len(self.ids)

    def commit(self, token_ids: list[int], stats: Optional[CommitStats] = None,
               logprobs: Optional[list[TokenLogprob]] = None) -> Commit:
        """Append a token set, cut at an end-of-turn token, a stop sequence or the length limit."""
        ids = list(token_ids[: self.remaining])
        ended = next((i for i, t in enumerate(ids) if t in self.end_ids), None)
        if ended is not None:
            ids, self.finish_reason = ids[:ended], "stop"
        self.ids.extend(ids)
        delta = self._stops.feed(self._decoder.push(ids))
        if self._stops.stopped:
            self.finish_reason = "stop"
        elif self.finish_reason is None and self.remaining <= 0:
            self.finish_reason = "length"
        if self.finish_reason is not None:
            delta += self._stops.feed(self._decoder.flush()) + self._stops.flush()
        self.text += delta
        return Commit(token_ids=ids, text=delta, stats=stats, finish_reason=self.finish_reason,
                      logprobs=None if logprobs is None else logprobs[: len(ids)])

    def end(self, reason: FinishReason) -> str:
        """Finish early (cancel, budget): return the text still held back."""
        self.finish_reason = self.finish_reason or reason
        delta = self._stops.feed(self._decoder.flush()) + self._stops.flush()
        self.text += delta
        return delta

    def replay(self, resume: Resume) -> int:
        """Commit again what another engine committed, set by set, so the decoder and the stop
        matcher end up in its state; the deltas are dropped (the client has them). Returns the
        number of commits, which, as in generation, does not count a time budget's empty tail."""
        for ids in resume.sets:
            self.commit(list(ids))
        if resume.finish_reason is not None:
            self.end(resume.finish_reason)
        return len(resume.sets) - (resume.finish_reason == "time_budget")
