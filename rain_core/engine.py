"""The engine: one backend (rain_core/backends/) answering requests by vanilla decoding, RAIN's search or
a baseline, all of them strategies of rain_core/search/ops.py run on a backend session. One request path for
every backend: `generate` is its only way in."""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import AsyncIterator, Iterator, Optional

from rain_core.backends import start_backend
from rain_core.backends.base import Backend
from rain_core.chat.answer import Answer
from rain_core.chat.prompt import RequestError, check_fits, prompt_ids, request_ids
from rain_core.config import THRESHOLD_STRATEGIES, EngineConfig, GenerationRequest, JudgeChoice, RainConfig
from rain_core.events import Commit, Event, Finish, GatedJudgment, Judgment, SearchTick, Totals
from rain_core.search.ops import Steps, drive
from rain_core.search.vanilla import vanilla_tokens


@dataclass
class Generation:
    """One request on its way through the engine: what it is fed, its answer and its counts."""

    request: GenerationRequest
    prompt: list[int]
    answer: Answer
    totals: Totals
    judgment: Optional[Judgment]
    started: float


class Engine:
    def __init__(self, config: EngineConfig = EngineConfig(), backend: Optional[Backend] = None):
        self.config = config
        self.backend = backend or start_backend(config)
        self.vocab = self.backend.vocab
        self.model_name = self.backend.model_name
        self.context_length = self.backend.context_length
        # events() and complete() run on this one loop: vLLM's engine client is bound to the loop it started on
        self._loop: Optional[asyncio.AbstractEventLoop] = None

    @property
    def tokenizer(self):
        return self.vocab.tokenizer

    def judge_name(self, choice: JudgeChoice) -> str:
        if choice not in self.backend.judges:
            raise RequestError("rain.judge 'served' needs a judge model; start the server with --judge-model",
                               "rain.judge")
        return self.backend.judges[choice]

    @property
    def end_ids(self) -> frozenset[int]:
        return self.vocab.end_ids

    # prompts and answers -------------------------------------------------------------------------
    def prompt_ids(self, messages) -> list[int]:
        return prompt_ids(self.tokenizer, messages)

    def request_ids(self, request: GenerationRequest) -> list[int]:
        return request_ids(self.tokenizer, request)

    def new_answer(self, request: GenerationRequest) -> Answer:
        return self.vocab.answer(request.params)

    def check_fits(self, prompt_tokens: int, max_new_tokens: int) -> None:
        check_fits(self.context_length, prompt_tokens, max_new_tokens)

    # generation ------------------------------------------------------------------------------
    def judgment(self, rain: RainConfig) -> Judgment:
        """What a judged request will report: its strategy, its judge and the threshold self_check and gated apply."""
        threshold = None
        if rain.strategy in THRESHOLD_STRATEGIES:
            threshold = self.config.judge_threshold if rain.judge_threshold is None else rain.judge_threshold
        kind = GatedJudgment if rain.strategy == "gated" else Judgment
        return kind(rain.strategy, self.judge_name(rain.judge), threshold)

    async def generate(self, request: GenerationRequest) -> AsyncIterator[Event]:
        """Yield Commit events (and SearchTicks under RAIN and the baselines), then one Finish. The
        request's operations go to the backend as its strategy asks for them; cancelling the task that
        iterates this (or closing it) ends the request and frees what it holds there. A request with a
        `resume` continues that answer: its sets are replayed silently (the client has their text)."""
        g = self._begin(request)
        session = await self.backend.open_session(request, g.prompt + g.answer.ids, g.answer.ids, g.totals)
        steps = drive(self.strategy(g), session)
        try:
            async for step in steps:
                yield self._record(g, step)
                if g.answer.finish_reason:
                    break
        finally:
            await steps.aclose()
            await session.aclose()
        yield self._end(g)

    def _begin(self, request: GenerationRequest) -> Generation:
        started = time.perf_counter()
        judgment = None if request.rain is None else self.judgment(request.rain)
        # the API process sends the ids it counted: the conversation is laid out once
        prompt = list(request.prompt_ids) if request.prompt_ids is not None else self.request_ids(request)
        self.check_fits(len(prompt), request.params.max_new_tokens)
        g = Generation(request, prompt, self.new_answer(request), Totals(prompt_tokens=len(prompt)), judgment, started)
        if request.resume is not None:
            g.totals.commits = g.answer.replay(request.resume)
        return g

    def _record(self, g: Generation, step: Event) -> Event:
        """What a strategy's step becomes for the client: a tick, or a commit into the answer (a time
        budget's end commits the text still held back)."""
        if isinstance(step, SearchTick):
            return step
        if isinstance(step, Finish):
            tail = g.answer.end(step.finish_reason)
            return Commit([], tail, finish_reason=g.answer.finish_reason)
        g.totals.commits += 1
        if step.token_ids:
            g.totals.mark_first_token(time.perf_counter() - g.started)
        return g.answer.commit(step.token_ids, step.stats, step.logprobs)

    def _end(self, g: Generation) -> Finish:
        g.totals.completion_tokens = len(g.answer.ids)
        g.totals.wall_s = time.perf_counter() - g.started
        return Finish(g.answer.finish_reason or "stop", g.totals, g.answer.text, g.judgment)

    def strategy(self, g: Generation) -> Steps:
        """The proposals of the request's strategy: vanilla tokens, RAIN's sets, a baseline's answer, or gated
        decoding's judged sentences."""
        request = g.request
        if request.rain is None:
            return vanilla_tokens(request.params)
        if request.rain.strategy == "rain":
            from rain_core.search.rain import RainSearch

            return RainSearch(request, self.tokenizer, self.vocab.end_ids, g.answer, g.totals).steps()
        if request.rain.strategy == "gated":
            from rain_core.search.gated import gated

            return gated(self.vocab, request, g.totals, g.judgment)
        from rain_core.search.baselines import STRATEGIES

        return STRATEGIES[request.rain.strategy](self.vocab, request, g.totals, g.judgment)

    # for scripts and tests: the same path, driven to its end on an event loop of its own ----------------
    def events(self, request: GenerationRequest) -> Iterator[Event]:
        """`generate`'s events, for a caller without an event loop (rain-generate, benchmarks, tests)."""
        return iter(self.run(_collect(self.generate(request))))

    def complete(self, request: GenerationRequest) -> Finish:
        """Run a generation to the end and return its Finish event."""
        *_, finish = self.events(request)
        return finish

    def run(self, coroutine):
        """Run a coroutine on this engine's own event loop."""
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
        return self._loop.run_until_complete(coroutine)


async def _collect(events: AsyncIterator[Event]) -> list[Event]:
    return [event async for event in events]
