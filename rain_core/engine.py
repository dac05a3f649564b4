"""The engine: one loaded model that answers conversations by vanilla decoding or by RAIN search."""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from functools import cached_property
from typing import Any, AsyncIterator, Iterator, Optional

import torch

from .answer import Answer
from .config import EngineConfig, EvaluatorConfig, GenerationRequest, JudgeChoice, RainConfig
from .events import Commit, Event, Finish, Judgment, SearchTick, Totals
from .models import load_model, load_tokenizer, resolve
from .backends.transformers import TransformersSession
from .ops import Strategy, drive, drive_async
from .runner import ModelRunner
from .sampling import make_generator
from .template import TemplateError, chat_ids, end_token_ids, text_ids
from .vanilla import vanilla_tokens

log = logging.getLogger(__name__)



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
        return text_prompt_ids(tokenizer, request.prompt_text)
    return prompt_ids(tokenizer, request.messages)


def check_fits(context_length: int, prompt_tokens: int, max_new_tokens: int) -> None:
    if prompt_tokens + max_new_tokens > context_length:
        raise RequestError(
            f"this model's context is {context_length} tokens; the prompt has {prompt_tokens} and "
            f"max_tokens asks for {max_new_tokens} more ({prompt_tokens + max_new_tokens} in all)",
            "max_tokens",
        )


@dataclass(frozen=True)
class JudgeModel:
    """A model that judges answers: the served one itself, or the separate --judge-model."""

    name: str  # what responses report: the judge's model id, or "self"
    runner: Optional[ModelRunner]  # None on the vLLM backend, whose engines run the judges
    tokenizer: Any


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
    def __init__(self, config: EngineConfig = EngineConfig()):
        self.config = config
        if config.threads:
            torch.set_num_threads(config.threads)
        self.source = resolve(config.model)
        self.model_name = self.source.name
        self.tokenizer = load_tokenizer(self.source)
        self.end_ids = end_token_ids(self.tokenizer)
        self.runner: Optional[ModelRunner] = None
        if config.backend == "vllm":
            from .backends.vllm import VllmBackend

            self.vllm = VllmBackend(config, source=self.source, tokenizer=self.tokenizer)
            self.device = torch.device(config.device)
            self.context_length = self.vllm.context_length
        else:
            self.runner = self._start_runner()
            self.device = self.runner.device
            self.context_length = self.runner.max_positions
        self._lock = threading.Lock()
        self._evaluators: dict = {}
        self.judges = {"self": JudgeModel("self", self.runner, self.tokenizer)}
        if config.judge_model is not None:
            self.judges["served"] = self._load_judge(config.judge_model)

    def _start_runner(self) -> ModelRunner:
        if self.config.tp > 1:
            from .tp import start_tensor_parallel

            return start_tensor_parallel(self.source, self.config)
        return ModelRunner(load_model(self.source, self.config.device, self.config.dtype), self.config.device)

    def _load_judge(self, name: str) -> JudgeModel:
        """The judge runs on the served model's device, unsharded: it only reads two option
        log-probabilities per evaluation, so it need not be as large as the model it judges. On the
        vLLM backend it is an engine of its own, which that backend started."""
        if self.config.backend == "vllm":
            judge = self.vllm.judges["served"]
            return JudgeModel(judge.name, None, judge.tokenizer)
        source = resolve(name)
        model = load_model(source, str(self.device), self.config.dtype)
        return JudgeModel(source.name, ModelRunner(model, self.device), load_tokenizer(source))

    def judge(self, choice: JudgeChoice) -> JudgeModel:
        if choice not in self.judges:
            raise RequestError("rain.judge 'served' needs a judge model; start the server with --judge-model",
                               "rain.judge")
        return self.judges[choice]

    @cached_property
    def embedder(self):
        from .embedder import SentenceEmbedder

        return SentenceEmbedder(self.config.encoder, self.device)

    def evaluator(self, config: EvaluatorConfig, judge: JudgeChoice = "self"):
        """The evaluator of one format on one judge (its own runner and chat template); its fixed
        prompt prefix is fed once and kept."""
        from .selfeval import SelfEvaluator

        model = self.judge(judge)
        with self._lock:
            if (judge, config) not in self._evaluators:
                self._evaluators[judge, config] = SelfEvaluator(model.runner, model.tokenizer, config)
            return self._evaluators[judge, config]

    def self_evaluate(self, messages, answer: str, config: EvaluatorConfig = EvaluatorConfig(),
                      judge: JudgeChoice = "self"):
        """Judge `answer` to the conversation `messages`: a SelfEvalResult (value in [-1, 1])."""
        session = self.evaluator(config, judge).session(messages)
        try:
            return session.evaluate(answer)
        finally:
            session.close()

    @torch.inference_mode()
    def answer_logprob(self, messages, answer: str) -> float:
        """Sum of the log-probabilities of `answer`'s tokens after the chat-templated prompt."""
        prompt = self.prompt_ids(messages)
        answer_ids = text_ids(self.tokenizer, answer)
        cache = self.runner.new_cache()
        try:
            rows = torch.arange(len(prompt) - 1, len(prompt) + len(answer_ids) - 1)
            logits = self.runner.forward(cache, torch.tensor(prompt + answer_ids), logits_at=rows)
        finally:
            self.runner.free_cache(cache)
        logprobs = torch.log_softmax(logits, -1)
        return float(logprobs.gather(-1, torch.tensor(answer_ids, device=logprobs.device).unsqueeze(-1)).sum())

    # prompts ---------------------------------------------------------------------------------
    def prompt_ids(self, messages) -> list[int]:
        return prompt_ids(self.tokenizer, messages)

    def request_ids(self, request: GenerationRequest) -> list[int]:
        return request_ids(self.tokenizer, request)

    def check_fits(self, prompt_tokens: int, max_new_tokens: int) -> None:
        check_fits(self.context_length, prompt_tokens, max_new_tokens)

    # generation ------------------------------------------------------------------------------
    def new_answer(self, request: GenerationRequest) -> Answer:
        """An empty answer under the request's limits: stop sequences, end-of-turn tokens, max tokens."""
        return Answer(self.tokenizer, self.end_ids, request.params.stop, request.params.max_new_tokens)

    def judgment(self, rain: RainConfig) -> Judgment:
        """What a judged request will report: its strategy, its judge and self_check's threshold."""
        threshold = None
        if rain.strategy == "self_check":
            threshold = self.config.judge_threshold if rain.judge_threshold is None else rain.judge_threshold
        return Judgment(rain.strategy, self.judge(rain.judge).name, threshold)

    def generate(self, request: GenerationRequest, cancel: Optional[threading.Event] = None) -> Iterator[Event]:
        """Yield Commit events (and SearchTicks under RAIN and the baselines), then one Finish. Closing
        the generator frees its caches; `cancel` ends it at the next token or wave of the search. A request
        with a `resume` continues that answer: its sets are replayed silently (the client has their text).
        The operations run one at a time on the transformers backend, in the reference order."""
        g = self._begin(request)
        if g.answer.finish_reason is None:  # a resumed answer may have ended just before its worker died
            session = TransformersSession(self, request, g.prompt + g.answer.ids, make_generator(request.params.seed, self.device),
                                          g.totals, g.answer.ids)
            g.totals.prefill_s = time.perf_counter() - g.started
            steps = drive(self.strategy(g), session)
            try:
                for step in steps:
                    if cancel is not None and cancel.is_set():
                        g.answer.end("cancelled")
                        break
                    yield self._record(g, step)
                    if g.answer.finish_reason:
                        break
            finally:
                steps.close()
                session.close()
        yield self._end(g)

    async def generate_async(self, request: GenerationRequest) -> AsyncIterator[Event]:
        """`generate` on the vLLM backend: the request's operations go to the engine as they come,
        batched by it with every other request's (and a wave's leaves with each other). Cancelling the
        task that iterates this aborts whatever the request still has in the engine."""
        g = self._begin(request)
        if g.answer.finish_reason is None:
            session = self.vllm.session(request, g.prompt + g.answer.ids, g.answer.ids, g.totals)
            # vanilla decoding is one streaming generation there, not one engine request per token
            steps = session.vanilla() if request.rain is None else drive_async(self.strategy(g), session)
            try:
                async for step in steps:
                    yield self._record(g, step)
                    if g.answer.finish_reason:
                        break
            finally:
                await steps.aclose()
                await session.aclose()
        yield self._end(g)

    def _begin(self, request: GenerationRequest) -> "Generation":
        started = time.perf_counter()
        judgment = None if request.rain is None else self.judgment(request.rain)
        prompt = self.request_ids(request)
        self.check_fits(len(prompt), request.params.max_new_tokens)
        g = Generation(request, prompt, self.new_answer(request), Totals(prompt_tokens=len(prompt)), judgment, started)
        if request.resume is not None:
            g.totals.commits = g.answer.replay(request.resume)
        return g

    def _record(self, g: "Generation", step: Event) -> Event:
        """What a strategy's step becomes for the client: a tick, or a commit into the answer (a time
        budget's end commits the text still held back)."""
        if isinstance(step, SearchTick):
            return step
        if isinstance(step, Finish):
            tail = g.answer.end(step.finish_reason)
            return Commit([], tail, finish_reason=g.answer.finish_reason)
        g.totals.commits += 1
        return g.answer.commit(step.token_ids, step.stats, step.logprobs)

    def _end(self, g: "Generation") -> Finish:
        g.totals.completion_tokens = len(g.answer.ids)
        g.totals.wall_s = time.perf_counter() - g.started
        return Finish(g.answer.finish_reason or "stop", g.totals, g.answer.text, g.judgment)

    def strategy(self, g: "Generation") -> Strategy:
        """The proposals of the request's strategy: vanilla tokens, RAIN's sets, or a baseline's answer."""
        request = g.request
        if request.rain is None:
            return vanilla_tokens(request.params)
        if request.rain.strategy == "rain":
            from .search import RainSearch

            return RainSearch(request, self.tokenizer, self.end_ids, g.answer, g.totals).steps()
        from .baselines import STRATEGIES

        return STRATEGIES[request.rain.strategy](self, request, g.totals, g.judgment)

    def complete(self, request: GenerationRequest) -> Finish:
        """Run a generation to the end and return its Finish event."""
        *_, finish = self.generate(request)
        return finish
