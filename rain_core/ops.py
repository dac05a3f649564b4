"""The model operations a strategy asks for, and what each one answers: the seam between the
algorithm (search.py, vanilla.py, baselines.py) and the backend that executes it.

A strategy is a generator. It yields an operation and receives its result (`result = yield op`),
or yields a list of operations and receives their results in the same order; it also yields the
events of the generation (commits and ticks), which receive None. It never holds a model, a cache
or an engine. Every operation is relative to the request's state: the prompt plus the sets
committed so far (`Append` grows it); a `path` adds tokens on top without committing them.

`Session` is what a backend implements for one request: the transformers backend executes the
operations on a KV cache (exact, the reference; the operations of one list share their model calls),
the vLLM backend turns them into engine requests that its scheduler batches with every other request's.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import AsyncIterator, Generator, Iterator, Optional, Protocol, Union

import torch

from .branches import Branch, RowSpec
from .events import Event, TokenLogprob
from .selfeval import SelfEvalResult


@dataclass(frozen=True)
class TopTokens:
    """The `k` most likely next tokens after the state plus `path`, with their probabilities."""

    path: tuple[int, ...]
    k: int


@dataclass(frozen=True)
class Ranked:
    ids: list[int]
    probs: list[float]  # under the full next-token distribution, most likely first


@dataclass(frozen=True)
class Grow:
    """Continuations of the state plus `path`, one per row, each under its row's sampling (answers list[Branch])."""

    path: tuple[int, ...]
    rows: tuple[RowSpec, ...]


@dataclass(frozen=True)
class Judge:
    """The request's judge's verdict on `answer` as the reply to the request's conversation (answers SelfEvalResult)."""

    answer: str


@dataclass(frozen=True)
class Embed:
    """Sentence embeddings of `texts` (answers a float tensor [len(texts), dim] on the CPU)."""

    texts: tuple[str, ...]


@dataclass(frozen=True)
class Append:
    """Commit `tokens` to the state; answers their log-probabilities under the model when `top_logprobs`
    is set (the first token's comes from the distribution before them), else None."""

    tokens: tuple[int, ...]
    top_logprobs: Optional[int] = None


@dataclass(frozen=True)
class Decode:
    """Choose the next token at the state (greedy when temperature is None or 0) and append it (answers Decoded)."""

    temperature: Optional[float] = None
    top_p: float = 1.0
    top_logprobs: Optional[int] = None


@dataclass(frozen=True)
class Decoded:
    token: int
    logprobs: Optional[list[TokenLogprob]]


Op = Union[TopTokens, Grow, Judge, Embed, Append, Decode]
Result = Union[Ranked, list[Branch], SelfEvalResult, torch.Tensor, Optional[list[TokenLogprob]], Decoded]
# What a strategy yields: an operation, several to run together, or an event of the generation.
Strategy = Generator[Union[Op, list[Op], Event], object, None]

OPERATIONS = (TopTokens, Grow, Judge, Embed, Append, Decode)


class Session(Protocol):
    """One request's state on a backend."""

    def run_all(self, ops: list[Op]) -> list[Result]: ...

    def close(self) -> None: ...


class AsyncSession(Protocol):
    """One request's state on an asynchronous backend."""

    async def run_all(self, ops: list[Op]) -> list[Result]: ...

    async def aclose(self) -> None: ...


def lockstep(strategies: list[Strategy]) -> Generator[list[Op], list[Result], list[object]]:
    """Run several sub-strategies that yield only operations side by side: each round gathers the next
    operation of every one still running into one list, so a backend can execute them together.
    Returns each one's return value, in order."""
    results: list[object] = [None] * len(strategies)
    pending = {}
    for i, s in enumerate(strategies):
        _advance(s, i, None, pending, results)
    while pending:
        order = sorted(pending)
        answers = yield [pending[i] for i in order]
        pending = {}
        for i, answer in zip(order, answers):
            _advance(strategies[i], i, answer, pending, results)
    return results


def _advance(strategy: Strategy, i: int, answer: object, pending: dict, results: list) -> None:
    try:
        pending[i] = strategy.send(answer)
    except StopIteration as stop:
        results[i] = stop.value


def requested(item: object) -> Optional[list[Op]]:
    """The operations a strategy's item asks for, or None for an event: a list runs together and is
    answered with a list, a single operation is answered with its own result (see `answer`)."""
    if isinstance(item, list):
        return item
    return [item] if isinstance(item, OPERATIONS) else None


def answer(item: object, results: list[Result]) -> object:
    return results if isinstance(item, list) else results[0]


def drive(strategy: Strategy, session: Session) -> Iterator[Event]:
    """Run a strategy on a backend session, passing its events on: a single operation runs alone (the
    reference order), several asked together run together; closing this generator closes the strategy."""
    try:
        result = None
        while True:
            try:
                item = strategy.send(result)
            except StopIteration:
                return
            ops = requested(item)
            if ops is None:
                result = None
                yield item
            else:
                result = answer(item, session.run_all(ops))
    finally:
        strategy.close()


async def drive_async(strategy: Strategy, session: AsyncSession) -> AsyncIterator[Event]:
    """`drive` on an asynchronous backend (vLLM), where operations asked together are in the engine together."""
    try:
        result = None
        while True:
            try:
                item = strategy.send(result)
            except StopIteration:
                return
            ops = requested(item)
            if ops is None:
                result = None
                yield item
            else:
                result = answer(item, await session.run_all(ops))
    finally:
        strategy.close()
