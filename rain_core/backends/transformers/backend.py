"""The reference backend: one request's operations, executed in order on a KV cache of the model.

The state (prompt plus committed sets) lives in one cache that only grows. An operation on a path
feeds the path on top of it, works there (candidate and simulation rows side by side as branches of
the same cache) and truncates it back, so every operation starts from the committed state and a
seeded request is reproducible whatever ran before it. The logits at the last few states are kept,
so asking for the distribution at the state a `Grow` just started from costs nothing.

The operations of one wave of the search (`run_all`) share their model calls: the leaves' paths are
fed side by side as one prefix tree, their rows grow below them in one decode loop, and their
answers are judged in one forward call. A single operation runs exactly as it always has.

Every model call of the process runs on one executor thread, so requests take turns operation by
operation (their searches interleave) while the worker's event loop stays free for messages.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property, partial
from typing import Any, Callable, Optional, TypeVar

import torch

from rain_core.backends.base import Backend
from rain_core.backends.transformers.branches import grow_branches
from rain_core.backends.transformers.logprobs import maybe_logprobs
from rain_core.backends.transformers.runner import ModelRunner, TreeLayout
from rain_core.backends.transformers.sampling import make_generator, sample
from rain_core.backends.transformers.selfeval import SelfEvaluator
from rain_core.chat.answer import Vocabulary
from rain_core.chat.template import chat_ids, end_token_ids, text_ids
from rain_core.chat.text import ends_with_any
from rain_core.config import EngineConfig, EvaluatorConfig, GenerationRequest, JudgeChoice
from rain_core.events import EngineLoad, TokenLogprob, Totals
from rain_core.lru import LRU
from rain_core.models import load_model, load_tokenizer, resolve
from rain_core.search.ops import Append, Branch, Decode, Decoded, Embed, Grow, Judge, Op, Ranked, TopTokens, Verdict

STATE_LOGITS_KEPT = 32  # paths whose next-token logits stay at hand until the next commit (two waves of 16)
PATH_TAG = -2  # a wave's paths are branches PATH_TAG, PATH_TAG - 1, ... of the cache; the rows below them 0, 1, ...
# Evaluators kept per process, each a judge's fixed prompt prefix in a KV cache. A request's `principle` makes
# an evaluator of its own, so clients could otherwise grow the worker without bound; an evicted one is rebuilt.
EVALUATORS_KEPT = 16
T = TypeVar("T")
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class JudgeModel:
    """A model that judges answers on this backend: the served one itself, or the separate --judge-model."""

    name: str  # what responses report: the judge's model id, or "self"
    runner: ModelRunner
    tokenizer: Any


class TransformersBackend(Backend):
    """The served model (and a --judge-model) in this process, on one executor thread."""

    def __init__(self, config: EngineConfig):
        if config.tp > 1:
            raise ValueError("tensor parallelism is vLLM's: serve with --backend vllm --tp K")
        if config.threads:
            torch.set_num_threads(config.threads)
        self.config = config
        source = resolve(config.model)
        self.model_name = source.name
        tokenizer = load_tokenizer(source)
        self.vocab = Vocabulary(tokenizer, end_token_ids(tokenizer))
        self.runner = ModelRunner(load_model(source, config.device, config.dtype), config.device)
        self.device = self.runner.device
        self.context_length = self.runner.max_positions
        self._models = {"self": JudgeModel("self", self.runner, tokenizer)}
        if config.judge_model is not None:
            # on the served model's device, unsharded: it only reads two option log-probabilities per evaluation
            judge = resolve(config.judge_model)
            runner = ModelRunner(load_model(judge, str(self.device), config.dtype), self.device, judge=True)
            self._models["served"] = JudgeModel(judge.name, runner, load_tokenizer(judge))
        self.judges = {choice: model.name for choice, model in self._models.items()}
        self._evaluators: LRU[tuple[JudgeChoice, EvaluatorConfig], SelfEvaluator] = LRU(
            EVALUATORS_KEPT, on_evict=SelfEvaluator.close)
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="model")

    # the interface -----------------------------------------------------------------------------
    async def open_session(self, request: GenerationRequest, state: list[int], committed: list[int],
                           totals: Totals) -> "ThreadedSession":
        generator = make_generator(request.params.seed, self.device)
        return ThreadedSession(self, partial(TransformersSession, self, request, state, generator, totals, committed),
                               totals)

    def take_loads(self) -> dict[str, EngineLoad]:
        """One request per forward here: rows = steps."""
        loads = {self.model_name: self.runner.take_load()}
        if "served" in self._models:
            loads[self._models["served"].name] = self._models["served"].runner.take_load()
        return loads

    async def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def call(self, fn: Callable[..., T], *args, waits: Optional[Totals] = None) -> T:
        """Run `fn` on the model thread, counting into `waits` how long it waited there for other calls.
        Cancelled while it runs, it still finishes there (a forward cannot be interrupted)."""
        asked = time.perf_counter()

        def timed() -> T:
            if waits is not None:
                waits.add_wait(time.perf_counter() - asked)
            return fn(*args)

        return await asyncio.shield(asyncio.get_running_loop().run_in_executor(self._executor, timed))

    def call_later(self, fn: Callable[[], None]) -> None:
        """Queue `fn` on the model thread without waiting for it (after every call queued before it)."""
        self._executor.submit(fn).add_done_callback(_log_failure)

    # what sessions use (on the model thread) ---------------------------------------------------
    @cached_property
    def embedder(self):
        from rain_core.embedder import SentenceEmbedder

        return SentenceEmbedder(self.config.encoder, self.device)

    def evaluator(self, config: EvaluatorConfig, judge: JudgeChoice = "self") -> SelfEvaluator:
        """The evaluator of one format on one judge; its fixed prompt prefix is fed once and kept (the
        EVALUATORS_KEPT most recently used)."""
        model = self._models[judge]
        return self._evaluators.get_or_make((judge, config), lambda: SelfEvaluator(model.runner, model.tokenizer, config))

    # offline evaluation (bench.eval, tests): called outside the server, on the caller's thread ---------
    def self_evaluate(self, messages, answer: str, config: EvaluatorConfig = EvaluatorConfig(),
                      judge: JudgeChoice = "self") -> Verdict:
        """Judge `answer` to the conversation `messages` (value in [-1, 1])."""
        session = self.evaluator(config, judge).session(messages)
        try:
            return session.evaluate(answer)
        finally:
            session.close()

    @torch.inference_mode()
    def answer_logprob(self, messages, answer: str) -> float:
        """Sum of the log-probabilities of `answer`'s tokens after the chat-templated prompt."""
        prompt = chat_ids(self.vocab.tokenizer, messages)
        answer_ids = text_ids(self.vocab.tokenizer, answer)
        cache = self.runner.new_cache()
        try:
            rows = torch.arange(len(prompt) - 1, len(prompt) + len(answer_ids) - 1)
            logits = self.runner.forward(cache, torch.tensor(prompt + answer_ids), logits_at=rows)
        finally:
            self.runner.free_cache(cache)
        logprobs = torch.log_softmax(logits, -1)
        return float(logprobs.gather(-1, torch.tensor(answer_ids, device=logprobs.device).unsqueeze(-1)).sum())


def _log_failure(future) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.error("a queued model-thread call failed", exc_info=future.exception())


class ThreadedSession:
    """A TransformersSession as the engine sees it: each call runs on the backend's model thread. Under load
    every turn on that thread waits for each other request's, so a request takes no turn beyond its
    operations': its opening (the prompt's prefill) runs with its first operations, and its closing is queued
    without being waited for (a session a cancelled call opened is closed by it all the same)."""

    def __init__(self, backend: TransformersBackend, opening: Callable[[], "TransformersSession"], totals: Totals):
        self.backend, self.totals = backend, totals
        self._opening = opening
        self.session: Optional[TransformersSession] = None  # set on the model thread by the first call

    async def run_all(self, ops: list[Op]) -> list[object]:
        return await self.backend.call(self._run_all, ops, waits=self.totals)

    async def aclose(self) -> None:
        self.backend.call_later(self._close)

    def _run_all(self, ops: list[Op]) -> list[object]:
        if self.session is None:
            self.session = self._opening()
        return self.session.run_all(ops)

    def _close(self) -> None:
        if self.session is not None:
            self.session.close()


class TransformersSession:
    def __init__(self, backend: TransformersBackend, request: GenerationRequest, state: list[int],
                 generator: torch.Generator, totals: Totals, committed: list[int]):
        """`state`: the ids fed before the first operation (prompt plus a resumed answer's ids);
        `committed`: the answer's ids so far, whose text ends a clause or not."""
        self.backend, self.request, self.totals = backend, request, totals
        self.runner, self.generator = backend.runner, generator
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

    def run(self, op: Op) -> object:
        return self.run_all([op])[0]

    def run_all(self, ops: list[Op]) -> list[object]:
        """Several operations at once (the leaves of one wave of the search): each kind runs as one
        batch, so a wave's leaves share their model calls. One operation runs exactly as alone."""
        strays = [op for op in ops if type(op) not in self.EXECUTORS]
        if strays:
            raise TypeError(f"not a model operation: {strays[0]!r}")
        results: list[object] = [None] * len(ops)
        for kind, execute in self.EXECUTORS.items():
            at = [i for i, op in enumerate(ops) if type(op) is kind]
            if at:
                for i, result in zip(at, execute(self, [ops[i] for i in at])):
                    results[i] = result
        return results

    # operations --------------------------------------------------------------------------------
    def _top_tokens_all(self, ops: list[TopTokens]) -> list[Ranked]:
        ranked = []
        for op, row in zip(ops, self._logits_at_all([op.path for op in ops])):
            probs, ids = torch.softmax(row, -1).topk(op.k)
            ranked.append(Ranked(ids.tolist(), probs.tolist()))
        return ranked

    def _grow_all(self, ops: list[Grow]) -> list[list[Branch]]:
        specs = [spec for op in ops for spec in op.rows]
        leaf_of = [k for k, op in enumerate(ops) for _ in op.rows]
        if not specs:
            return [[] for _ in ops]
        try:
            if len(ops) == 1:  # the reference order: the path joins the shared state
                starts = self._feed_path(ops[0].path).view(1, -1)
                layout = TreeLayout.shared_prefix(self.runner.cache_length(self.cache), self.runner.device)
            else:  # every path a branch of its own, every row a branch below its path's
                layout, path_branches, path_logits = self._feed_paths([op.path for op in ops])
                starts = path_logits[leaf_of]
                layout.parents.update({row: path_branches[k] for row, k in enumerate(leaf_of)})
            before = [self.committed + list(op.path) for op in ops]
            branches = grow_branches(
                self.runner, self.cache, layout, starts, specs, self.generator, self.backend.vocab.end_ids,
                lambda row, ids, chars: ends_with_any(self.backend.vocab.tokenizer, before[leaf_of[row]] + ids, chars),
                self.totals)
        finally:
            self.runner.truncate(self.cache, self.committed_len)
        rows = iter(branches)
        return [[next(rows) for _ in op.rows] for op in ops]

    def _judge_all(self, ops: list[Judge]) -> list[Verdict]:
        if self._evaluation is None:
            rain = self.request.rain
            self._evaluation = self.backend.evaluator(rain.evaluator, rain.judge).session(self.request.messages,
                                                                                          self.totals)
        return self._evaluation.evaluate_all([op.answer for op in ops])

    def _embed_all(self, ops: list[Embed]) -> list[torch.Tensor]:
        return self.backend.embedder.embed_groups([op.texts for op in ops])

    def _append_all(self, ops: list[Append]) -> list[Optional[list[TokenLogprob]]]:
        return [self._append(op) for op in ops]

    def _decode_all(self, ops: list[Decode]) -> list[Decoded]:
        return [self._decode(op) for op in ops]

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

    def _logits_at_all(self, paths: list[tuple[int, ...]]) -> list[torch.Tensor]:
        """Next-token logits after the state plus each path; the paths not at hand are fed together
        (and truncated back)."""
        missing = [p for p in dict.fromkeys(paths) if p and p not in self._state_logits]
        if len(missing) > 1:
            try:
                self._feed_paths(missing)
            finally:
                self.runner.truncate(self.cache, self.committed_len)
        return [self._logits_at(p) for p in paths]

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
        self._keep_state_logits(path, logits)
        return logits

    def _feed_paths(self, paths: list[tuple[int, ...]]) -> tuple[TreeLayout, list[int], torch.Tensor]:
        """Feed every path on top of the state in one forward call, as one prefix tree (siblings feed
        their parents' tokens once), leaving them in the cache: the layout, each path's branch there
        (-1 for an empty path) and the logits at each path's end [paths, vocab]."""
        self._flush_pending()
        layout = TreeLayout.shared_prefix(self.committed_len, self.runner.device)
        tree = layout.add_sequences([list(p) for p in paths], PATH_TAG)
        logits = [self.root_logits] * len(paths)
        fed = [k for k, last in enumerate(tree.last) if last is not None]
        if fed:
            position_ids, mask = layout.append(tree.tags, tree.positions)
            out = self.runner.forward(self.cache, torch.tensor(tree.ids), position_ids, mask,
                                      torch.tensor([tree.last[k] for k in fed]), totals=self.totals)
            for k, row in zip(fed, out):
                logits[k] = row
                self._keep_state_logits(paths[k], row)
        return layout, tree.branch, torch.stack(logits)

    def _keep_state_logits(self, path: tuple[int, ...], logits: torch.Tensor) -> None:
        self._state_logits[path] = logits
        if len(self._state_logits) > STATE_LOGITS_KEPT:
            self._state_logits.popitem(last=False)

    # one executor per operation type: a wave's operations of one type run as one batch
    EXECUTORS: dict[type, Callable[["TransformersSession", list], list]] = {
        TopTokens: _top_tokens_all, Grow: _grow_all, Judge: _judge_all, Embed: _embed_all,
        Append: _append_all, Decode: _decode_all,
    }
