"""Incremental detokenization and stop sequences, so each commit costs a few short decodes."""
from __future__ import annotations


class IncrementalDecoder:
    """Turns a growing list of token ids into text deltas that never split a character.

    Only a short window of ids is decoded per push (the approach of TGI and vLLM): the text of the
    window before and after the new ids differs by the delta, unless the decode still ends in an
    incomplete character, in which case the ids wait for the next push.
    """

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.prefix_offset = 0
        self.read_offset = 0

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def push(self, ids: list[int]) -> str:
        self.ids.extend(ids)
        before = self._decode(self.ids[self.prefix_offset : self.read_offset])
        after = self._decode(self.ids[self.prefix_offset :])
        if len(after) > len(before) and not after.endswith("\ufffd"):
            self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
            return after[len(before) :]
        return ""

    def flush(self) -> str:
        """Whatever is left at the end of the answer, even an incomplete character."""
        before = self._decode(self.ids[self.prefix_offset : self.read_offset])
        after = self._decode(self.ids[self.prefix_offset :])
        self.prefix_offset = self.read_offset = len(self.ids)
        return after[len(before) :]


class StopMatcher:
    """Finds client stop sequences in streamed text, holding back text that may begin one."""

    def __init__(self, stops: tuple[str, ...]):
        self.stops = tuple(s for s in stops if s)
        self.pending = ""
        self.stopped = False

    def feed(self, delta: str) -> str:
        """Return the text that is safe to emit now; sets `stopped` when a stop sequence appeared."""
        if self.stopped:
            return ""
        self.pending += delta
        hits = [i for i in (self.pending.find(s) for s in self.stops) if i >= 0]
        if hits:
            self.stopped = True
            emitted, self.pending = self.pending[: min(hits)], ""
            return emitted
        hold = max((k for s in self.stops for k in range(1, len(s)) if self.pending.endswith(s[:k])), default=0)
        emitted = self.pending[: len(self.pending) - hold]
        self.pending = self.pending[len(emitted) :]
        return emitted

    def flush(self) -> str:
        emitted, self.pending = ("" if self.stopped else self.pending), ""
        return emitted


TAIL_TOKENS = 8  # enough trailing tokens to see the last character of the text


def ends_with_any(tokenizer, ids: list[int], chars: str) -> bool:
    """Whether the text of `ids` ends with one of `chars` (only the last few tokens are decoded)."""
    tail = tokenizer.decode(ids[-TAIL_TOKENS:], skip_special_tokens=True)
    return bool(tail) and tail[-1] in chars
