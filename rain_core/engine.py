"""The engine: one backend (rain_core/backends/) answering requests by vanilla decoding, RAIN's search or
a baseline, all of them strategies of rain_core/ops.py run on a backend session. One request path for
every backend: `generate` is its only way in."""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import AsyncIterator, Iterator, Optional

from .answer import Answer
from .backends import start_backend
from .backends.base import Backend
from .config import THRESHOLD_STRATEGIES, EngineConfig, GenerationRequest, JudgeChoice, RainConfig
from .events import Commit, Event, Finish, GatedJudgment, Judgment, SearchTick, Totals
from .ops import Steps, drive
from .template import LONE_SURROGATE, TemplateError, chat_ids
from .vanilla import vanilla_tokens


class RequestError(ValueError):
    """The request cannot be served as asked (too long for the context, bad messages, ...)."""

    def __init__(self, message: str, param: Optional[str] = None):
        super().__init__(message)
        self.param = param


def prompt_ids(tokenizer, messages) -> list[int]:
    """The conversation laid out by the model's chat template, ready for the answer; special-token
    strings inside the messages stay text (the one function for prompt ids: the API process counts
    the prompt with it too)."""
    if not messages:
        raise RequestError("messages must hold at least one message", "messages")
    try:
        return chat_ids(tokenizer, messages)
    except TemplateError as exc:
        raise RequestError(str(exc), "messages") from exc


def text_prompt_ids(tokenizer, text: str) -> list[int]:
    """A text completion's prompt: the text as the model continues it (with the tokenizer's own BOS,
    if it has one); control-token strings in it are text, never control tokens."""
    ids = tokenizer(text, split_special_tokens=True).input_ids
    if not ids:
        raise RequestError("prompt must not be empty", "prompt")
    return ids


def request_ids(tokenizer, request: GenerationRequest) -> list[int]:
    """What the model is fed before the answer: the chat-templated messages, or a completion's text."""
    if request.prompt_text is not None:
        _refuse_non_text(request.prompt_text, "prompt")
        return text_prompt_ids(tokenizer, request.prompt_text)
    for i, message in enumerate(request.messages):
        _refuse_non_text(message["content"], f"messages[{i}].content")
    return prompt_ids(tokenizer, request.messages)


def _refuse_non_text(text: str, param: str) -> None:
    """The server refuses these before a request is built; a library caller (rain-generate's argv) may not."""
    if LONE_SURROGATE.search(text):
        raise RequestError(f"{param} holds a lone UTF-16 surrogate, which is not text", param)


def check_fits(context_length: int, prompt_tokens: int, max_new_tokens: int, param: str = "max_tokens",
               counted: str = "the prompt has") -> None:
    """The one context check (the API process runs it before a request queues, the engine again)."""
    if prompt_tokens + max_new_tokens > context_length:
        raise RequestError(f"this model's context is {context_length} tokens; {counted} {prompt_tokens} tokens and "
                           f"the answer asks for {max_new_tokens} more", param)


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
            from .search import RainSearch

            return RainSearch(request, self.tokenizer, self.vocab.end_ids, g.answer, g.totals).steps()
        if request.rain.strategy == "gated":
            from .gated import gated

            return gated(self.vocab, request, g.totals, g.judgment)
        from .baselines import STRATEGIES

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
