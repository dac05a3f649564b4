"""The model operations a strategy asks for, each paired with the type of its result: the seam between
the algorithm (search.py, vanilla.py, baselines.py) and the backend that executes it (rain_core/backends/).

A strategy is a generator. It yields an operation and receives its result (`result = yield op`), or
yields a list of operations and receives their results in the same order; it also yields the events
of the generation (commits and ticks), which receive None. It never holds a model, a cache or an
engine. Every operation is relative to the request's state: the prompt plus the sets committed so far
(`Append` and `Decode` grow it); a `path` adds tokens on top without committing them.

This module imports nothing from execution: the search's import closure holds no model code.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, AsyncIterator, Generator, Generic, Optional, Protocol, TypeVar, Union

from rain_core.events import Event, TokenLogprob

if TYPE_CHECKING:
    import torch

R = TypeVar("R")


class Op(Generic[R]):
    """A model operation whose result is an R."""


# results -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Ranked:
    ids: list[int]
    probs: list[float]  # under the full next-token distribution, most likely first


@dataclass(frozen=True)
class RowSpec:
    """How one row of a Grow is drawn."""

    max_len: int
    greedy: bool = False
    temperature: float = 1.0
    top_k: int = 0  # 0: the full distribution
    top_p: float = 1.0
    stop_chars: str = ""  # the row ends once its text ends with one of these (simulations: at a clause)


@dataclass
class Branch:
    """One grown row."""

    tokens: list[int] = field(default_factory=list)
    logprob: float = 0.0  # under the row's own filtered distribution
    ended: bool = False  # stopped on an end-of-turn token

    @property
    def prob(self) -> float:
        return math.exp(self.logprob)


@dataclass
class Verdict:
    """A judge's verdict on an answer."""

    value: float  # in [-1, 1]; higher is better (more harmless / truthful / principled)
    log_odds: list[float]  # log P(good option) - log P(bad option), one per option order


@dataclass(frozen=True)
class Decoded:
    token: int
    logprobs: Optional[list[TokenLogprob]]


# operations --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TopTokens(Op[Ranked]):
    """The `k` most likely next tokens after the state plus `path`, with their probabilities."""

    path: tuple[int, ...]
    k: int


@dataclass(frozen=True)
class Grow(Op[list[Branch]]):
    """Continuations of the state plus `path`, one per row, each under its row's sampling."""

    path: tuple[int, ...]
    rows: tuple[RowSpec, ...]


@dataclass(frozen=True)
class Judge(Op[Verdict]):
    """The request's judge's verdict on `answer` as the reply to the request's conversation."""

    answer: str


@dataclass(frozen=True)
class Embed(Op["torch.Tensor"]):
    """Sentence embeddings of `texts`: a float tensor [len(texts), dim] on the CPU."""

    texts: tuple[str, ...]


@dataclass(frozen=True)
class Append(Op[Optional[list[TokenLogprob]]]):
    """Commit `tokens` to the state; answers their log-probabilities under the model when `top_logprobs`
    is set (the first token's comes from the distribution before them), else None."""

    tokens: tuple[int, ...]
    top_logprobs: Optional[int] = None


@dataclass(frozen=True)
class Decode(Op[Decoded]):
    """Choose the next token at the state (greedy when temperature is None or 0) and append it. A backend
    may decode ahead of the strategy (vLLM streams one generation for consecutive Decodes), so the answer
    is the same as one Decode at a time."""

    temperature: Optional[float] = None
    top_p: float = 1.0
    top_logprobs: Optional[int] = None


# What a strategy yields: an operation, several to run together, or an event of the generation.
Steps = Generator[Union[Op, list[Op], Event], object, None]


class Session(Protocol):
    """One request's state on a backend (rain_core/backends/base.py opens it)."""

    async def run_all(self, ops: list[Op]) -> list[object]: ...

    async def aclose(self) -> None: ...


def lockstep(strategies: list[Steps]) -> Generator[list[Op], list[object], list[object]]:
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


def _advance(strategy: Steps, i: int, answer: object, pending: dict, results: list) -> None:
    try:
        pending[i] = strategy.send(answer)
    except StopIteration as stop:
        results[i] = stop.value


def requested(item: object) -> Optional[list[Op]]:
    """The operations a strategy's item asks for, or None for an event: a list runs together and is
    answered with a list, a single operation is answered with its own result."""
    if isinstance(item, list):
        return item
    return [item] if isinstance(item, Op) else None


async def drive(strategy: Steps, session: Session) -> AsyncIterator[Event]:
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
                results = await session.run_all(ops)
                result = results if isinstance(item, list) else results[0]
    finally:
        strategy.close()
