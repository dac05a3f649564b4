"""The engine: one loaded model that answers conversations by vanilla decoding or by RAIN search."""
from __future__ import annotations

import logging
import threading
import time
from functools import cached_property
from typing import Iterator, Optional

import torch

from .answer import Answer
from .config import EngineConfig, EvaluatorConfig, GenerationRequest
from .events import Commit, Event, Finish, SearchTick, Totals
from .models import load_model, load_tokenizer, resolve
from .runner import ModelRunner
from .sampling import make_generator
from .template import TemplateError, chat_ids, text_ids
from .vanilla import vanilla_tokens

log = logging.getLogger(__name__)

# Tokens that open a new turn: an answer that reaches one has ended (the reference counted "Human:").
TURN_TOKENS = ("<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|end_of_text|>", "</s>")


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


class Engine:
    def __init__(self, config: EngineConfig = EngineConfig()):
        self.config = config
        if config.threads:
            torch.set_num_threads(config.threads)
        self.source = resolve(config.model)
        self.model_name = self.source.name
        self.tokenizer = load_tokenizer(self.source)
        if config.tp > 1:
            from .tp import start_tensor_parallel

            self.runner = start_tensor_parallel(self.source, config)
        else:
            model = load_model(self.source, config.device, config.dtype)
            self.runner = ModelRunner(model, config.device)
        self.device = self.runner.device
        self.context_length = self.runner.max_positions
        self.end_ids = self._end_token_ids()
        self._lock = threading.Lock()
        self._evaluators: dict = {}

    def _end_token_ids(self) -> frozenset[int]:
        ids = {self.tokenizer.eos_token_id}
        vocab = self.tokenizer.get_vocab()
        ids.update(vocab[t] for t in TURN_TOKENS if t in vocab)
        return frozenset(i for i in ids if i is not None)

    @cached_property
    def embedder(self):
        from .embedder import SentenceEmbedder

        return SentenceEmbedder(self.config.encoder, self.device)

    def evaluator(self, config: EvaluatorConfig):
        """The self-evaluator of one format; its fixed prompt prefix is fed once and kept."""
        from .selfeval import SelfEvaluator

        with self._lock:
            if config not in self._evaluators:
                self._evaluators[config] = SelfEvaluator(self.runner, self.tokenizer, config)
            return self._evaluators[config]

    def self_evaluate(self, messages, answer: str, config: EvaluatorConfig = EvaluatorConfig()):
        """Judge `answer` to the conversation `messages`: a SelfEvalResult (value in [-1, 1])."""
        session = self.evaluator(config).session(messages)
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
    def generate(self, request: GenerationRequest, cancel: Optional[threading.Event] = None) -> Iterator[Event]:
        """Yield Commit events (and SearchTicks under RAIN), then one Finish. Closing the generator
        frees its caches; `cancel` ends it at the next token or search iteration. A request with a
        `resume` continues that answer: its sets are replayed silently (the client has their text)."""
        started = time.perf_counter()
        prompt = self.request_ids(request)
        params = request.params
        self.check_fits(len(prompt), params.max_new_tokens)
        totals = Totals(prompt_tokens=len(prompt))
        answer = Answer(self.tokenizer, self.end_ids, params.stop, params.max_new_tokens)
        if request.resume is not None:
            totals.commits = answer.replay(request.resume)
        if answer.finish_reason is None:  # a resumed answer may have ended just before its worker died
            yield from self._decode(request, prompt, answer, cancel, totals, started)
        totals.completion_tokens = len(answer.ids)
        totals.wall_s = time.perf_counter() - started
        yield Finish(answer.finish_reason or "stop", totals, answer.text)

    def _decode(self, request: GenerationRequest, prompt: list[int], answer: Answer,
                cancel: Optional[threading.Event], totals: Totals, started: float) -> Iterator[Event]:
        """Decode on top of the prompt plus what the answer holds already, committing into `answer`."""
        params = request.params
        generator = make_generator(params.seed, self.device)
        cache = self.runner.new_cache()
        try:
            logits = self.runner.forward(cache, torch.tensor(prompt + answer.ids), totals=totals)
            totals.prefill_s = time.perf_counter() - started
            if request.rain is None:
                steps = vanilla_tokens(self.runner, cache, logits, params, generator, totals)
            else:
                from .search import RainSearch

                search = RainSearch(self, request, prompt, cache, logits, answer, generator, totals)
                steps = search.steps()
            try:
                for step in steps:
                    if cancel is not None and cancel.is_set():
                        answer.end("cancelled")
                        break
                    if isinstance(step, SearchTick):
                        yield step
                        continue
                    if isinstance(step, Finish):  # the search ran out of its time budget
                        tail = answer.end(step.finish_reason)
                        yield Commit([], tail, finish_reason=answer.finish_reason)
                        break
                    commit = answer.commit(step.token_ids, step.stats, step.logprobs)
                    totals.commits += 1
                    yield commit
                    if answer.finish_reason:
                        break
            finally:
                steps.close()
        finally:
            self.runner.free_cache(cache)

    def complete(self, request: GenerationRequest) -> Finish:
        """Run a generation to the end and return its Finish event."""
        *_, finish = self.generate(request)
        return finish
