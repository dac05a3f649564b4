"""The answer under construction: committed ids, text deltas, and when it must end."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from rain_core.chat.text import IncrementalDecoder, StopMatcher
from rain_core.config import Resume, SamplingParams
from rain_core.events import Commit, CommitStats, FinishReason, TokenLogprob


@dataclass(frozen=True)
class Vocabulary:
    """The served model's tokenizer and end-of-turn ids: what a strategy needs to read and end an answer."""

    tokenizer: Any
    end_ids: frozenset[int]

    def answer(self, params: SamplingParams) -> "Answer":
        """An empty answer under a request's limits: stop sequences, end-of-turn tokens, max tokens."""
        return Answer(self.tokenizer, self.end_ids, params.stop, params.max_new_tokens)

    def ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False).input_ids

    @property
    def end_id(self) -> int:
        """The end-of-turn token an answer the server writes ends with."""
        eos = self.tokenizer.eos_token_id
        return eos if eos in self.end_ids else min(self.end_ids)


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
        return len(resume.sets)
