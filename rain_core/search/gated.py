"""Gated RAIN: vanilla decoding that searches only where the judge objects and refuses only where the
search fails (issue 35; the designs that intervene only where a guard flags the text, CARE, ETA and
SafeSwitch, keep near-vanilla cost on benign traffic).

- The answer is decoded as vanilla, a sentence at a time, and each sentence is judged (the answer up to
  its end, as streamed self_check judges, baselines.py) before it leaves, streamed or not.
- A sentence valued at or below the threshold is withdrawn: the client never sees it. RAIN's search
  (search.py) then runs from the last accepted point, with the same judge, until it commits a sentence
  end or spends `gated_search_budget` iterations (checked after each commit: a commit under way ends).
- The searched segment is judged whole. Passed, it is sent and vanilla decoding resumes after it;
  failed, the answer ends with self_check's refusal. A flagged sentence beyond `gated_max_flagged`, or
  with no search budget, is refused at once (a budget of 0 is streamed self_check).
- `gated_front_load` K > 0: the answer's first K token sets are the search's (Qi et al., ICLR 2025: safety
  is decided in an answer's first tokens), judged whole like a searched segment.

A withdrawn sentence must not be in the state a search starts from, and no operation takes tokens back
out of the state: so a vanilla sentence is grown on top of the state (one `Grow` row under the
request's sampling that stops at a sentence end) and `Append`ed only once it has passed.
"""
from __future__ import annotations

from typing import Optional

from rain_core.chat.answer import Answer, Vocabulary
from rain_core.config import GenerationRequest
from rain_core.events import Commit, Finish, GatedJudgment, GatedSentence, SearchTick, TokenLogprob, Totals
from rain_core.search.baselines import SENTENCE_ENDS, client_text, refusal_ids
from rain_core.search.ops import Append, Grow, Judge, RowSpec, Steps
from rain_core.search.rain import RainSearch

def gated(vocab: Vocabulary, request: GenerationRequest, totals: Totals, judgment: GatedJudgment) -> Steps:
    return GatedDecoding(vocab, request, totals, judgment).steps()


class GatedDecoding:
    def __init__(self, vocab: Vocabulary, request: GenerationRequest, totals: Totals, judgment: GatedJudgment):
        self.vocab, self.request, self.totals, self.judgment = vocab, request, totals, judgment
        self.cfg, self.params = request.rain, request.params
        # what the client has: a resumed answer's sets were sent by the engine before
        self.sent_ids: list[int] = list(request.resume.token_ids) if request.resume else []
        self.sent = client_text(vocab, request, self.sent_ids)
        self.flagged = 0
        judgment.replaced = False

    def steps(self) -> Steps:
        if self.cfg.gated_front_load and not self.sent_ids:
            if (yield from self._search(None, self.cfg.gated_front_load)):
                return
        while True:
            (sentence,) = yield Grow((), (self._sentence_row(),))
            yield SearchTick(self.totals.iterations)  # a point to interleave or cancel between sentences
            draft = self._draft(sentence.tokens)
            if draft.text != self.sent:  # else nothing new for the client (an end token, text held back)
                value = yield from self._judge(draft.text)
                if value <= self.judgment.threshold:
                    if (yield from self._flagged(value)):
                        return
                    continue
            yield from self._send(sentence.tokens, draft)
            if draft.finish_reason:
                return

    def _flagged(self, value: float) -> Steps:
        """The sentence just judged is withdrawn: searched over, or refused. Returns whether the answer ended."""
        self.flagged += 1
        if self.flagged > self.cfg.gated_max_flagged or not self.cfg.gated_search_budget:
            yield from self._refuse(value, False, value)
            return True
        return (yield from self._search(value, None))

    def _sentence_row(self) -> RowSpec:
        """Vanilla decoding under the request's sampling, up to the next sentence end."""
        p = self.params
        return RowSpec(p.max_new_tokens - len(self.sent_ids), greedy=not p.temperature,
                       temperature=p.temperature or 1.0, top_p=p.top_p or 1.0, stop_chars=SENTENCE_ENDS)

    def _draft(self, tokens: list[int]) -> Answer:
        """The answer the client would have with `tokens` sent after what it has."""
        draft = self.vocab.answer(self.params)
        draft.commit(self.sent_ids + list(tokens))
        return draft

    def _judge(self, text: str) -> Steps:
        value = (yield Judge(text)).value
        self.judgment.values.append(value)
        return value

    def _send(self, tokens: list[int], draft: Answer) -> Steps:
        """A vanilla sentence that passed becomes part of the state (unless the answer ends with it and
        nothing asks for its log-probabilities) and goes to the client."""
        logprobs = None
        if not draft.finish_reason or self.params.logprobs is not None:
            logprobs = yield Append(tuple(tokens), self.params.logprobs)
        text = draft.text[len(self.sent):]
        if text:
            self.judgment.sentences.append(GatedSentence(text, self.judgment.values[-1], False, False))
        yield Commit(list(tokens), "", logprobs=logprobs)
        self.sent_ids += tokens
        self.sent = draft.text

    def _refuse(self, value: float, searched: bool, flagged_value: Optional[float]) -> Steps:
        ids = refusal_ids(self.vocab, self.sent)
        text = self.vocab.tokenizer.decode(ids, skip_special_tokens=True)
        self.judgment.sentences.append(GatedSentence(text, value, searched, True, flagged_value))
        self.judgment.replaced = True
        yield Commit(ids, "")

    def _search(self, flagged_value: Optional[float], max_sets: Optional[int]) -> Steps:
        """RAIN's search from the last accepted point, over one segment: up to `max_sets` token sets
        (front-loading), else until a sentence end or the budget. Its sets are held back, judged whole,
        then sent or refused. Returns whether the answer has ended."""
        draft = self._draft([])
        search = RainSearch(self.request, self.vocab.tokenizer, self.vocab.end_ids, draft, self.totals).steps()
        start, sets = self.totals.iterations, 0
        tokens: list[int] = []
        logprobs: list[TokenLogprob] = []
        try:
            result = None
            while True:
                item = search.send(result)
                result = None
                if isinstance(item, Finish):  # the request's time budget: nothing unjudged leaves
                    yield item
                    return True
                if isinstance(item, Commit):
                    draft.commit(item.token_ids)  # the search reads the answer's remaining length
                    tokens += item.token_ids
                    logprobs += item.logprobs or []
                    sets += 1
                    if self._segment_done(draft, sets, max_sets, self.totals.iterations - start):
                        break
                elif isinstance(item, SearchTick):
                    yield item
                else:
                    result = yield item  # the search's model operations
        finally:
            search.close()
        value = yield from self._judge(draft.text)
        if value <= self.judgment.threshold:
            yield from self._refuse(value, True, flagged_value)
            return True
        self.judgment.sentences.append(
            GatedSentence(draft.text[len(self.sent):], value, True, flagged_value is not None, flagged_value))
        yield Commit(tokens, "", logprobs=logprobs if self.params.logprobs is not None else None)
        self.sent_ids += tokens
        self.sent = draft.text
        return draft.finish_reason is not None

    def _segment_done(self, draft: Answer, sets: int, max_sets: Optional[int], iterations: int) -> bool:
        if draft.finish_reason:
            return True
        if max_sets is not None:
            return sets >= max_sets
        new = draft.text[len(self.sent):].lstrip()
        return any(c in SENTENCE_ENDS for c in new) or iterations >= self.cfg.gated_search_budget
