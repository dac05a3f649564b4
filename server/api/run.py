"""One admitted generation, from the pool's events to its last: enforces --request-timeout, cancels the
job when the client goes away, records the metrics. Every endpoint renders what a `Run` yields."""
from __future__ import annotations

import asyncio
import time
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import AsyncIterator, Awaitable, Optional, Sequence, TypeVar, Union

from starlette.requests import Request

from server.api import render
from server.api.errors import ApiError
from server.api.metrics import Metrics
from server.workers.pool import Job, Pool
from server.workers.protocol import Delta, Done, Failed

T = TypeVar("T")


def wants_logprobs(job: Job) -> bool:
    return job.request.params.logprobs is not None


@dataclass(frozen=True)
class Step:
    """A committed set, the end of the generation, or both (the set that ends it)."""

    delta: Optional[Delta]  # None: the generation ended without a set of its own (its cancel flag stopped it)
    done: Optional[Done] = None  # set on the generation's last step


@dataclass
class Outcome:
    """A generation that ran to its end, as a non-streamed response needs it."""

    job: Job
    deltas: list[Delta]
    done: Done

    @property
    def text(self) -> str:
        return "".join(d.text for d in self.deltas)

    @property
    def wants_logprobs(self) -> bool:
        return wants_logprobs(self.job)


class Run:
    def __init__(self, pool: Pool, metrics: Metrics, job: Job, timeout_s: float):
        self.pool, self.metrics, self.job = pool, metrics, job
        self.deadline = job.arrived + timeout_s
        self.timeout_s = timeout_s

    @property
    def wants_logprobs(self) -> bool:
        return wants_logprobs(self.job)

    async def _next_event(self) -> Union[Delta, Done]:
        try:
            message = await asyncio.wait_for(self.job.events.get(), self.deadline - time.monotonic())
        except asyncio.TimeoutError:
            raise ApiError(504, f"the request ran longer than the server's --request-timeout "
                                f"({self.timeout_s:g} s)", code="request_timeout") from None
        if isinstance(message, Failed):
            raise ApiError(message.status, message.message, message.param, message.code)
        delta = message.last if isinstance(message, Done) else message
        if delta is not None and delta.tokens and self.job.first_token is None:
            self.job.first_token, self.job.first_tokens = time.monotonic(), delta.tokens
        if isinstance(message, Done):
            self.metrics.finished(self.job, message, render.finish_reason(message))
        return message

    @contextmanager
    def _outcome(self):
        """Count a generation that ends without a Done, and withdraw it from its worker."""
        try:
            yield
        except ApiError:
            self.metrics.ended(self.job, "error")
            raise
        except BaseException:  # cancelled or closed: the client went away
            self.metrics.ended(self.job, "cancelled")
            raise
        finally:
            self.pool.cancel(self.job)  # a no-op once it has finished

    async def steps(self) -> AsyncIterator[Step]:
        """Every committed set in order; the last step carries the Done. Raises ApiError on failure."""
        with self._outcome():
            while isinstance(message := await self._next_event(), Delta):
                yield Step(message)
            yield Step(message.last, message)

    async def outcome(self) -> Outcome:
        deltas: list[Delta] = []
        done: Optional[Done] = None
        async for step in self.steps():  # to its end: a generator left open would count as cancelled
            if step.delta is not None:
                deltas.append(step.delta)
            done = step.done or done
        return Outcome(self.job, deltas, done)


async def outcomes(runs: Sequence[Run]) -> list[Outcome]:
    """Every run to its end, concurrently; the first failure cancels the others."""
    tasks = [asyncio.ensure_future(run.outcome()) for run in runs]
    try:
        return list(await asyncio.gather(*tasks))
    finally:
        for task in tasks:
            task.cancel()


async def interleaved(runs: Sequence[Run]) -> AsyncIterator[tuple[int, Run, Step]]:
    """The steps of several runs as they come, each with its run's index; the first failure (ApiError)
    ends them all, and so does closing this iterator."""
    streams = [run.steps() for run in runs]
    pending = {asyncio.ensure_future(anext(s)): i for i, s in enumerate(streams)}
    try:
        while pending:
            finished, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in sorted(finished, key=pending.get):
                index = pending.pop(task)
                try:
                    step = task.result()
                except StopAsyncIteration:
                    continue
                yield index, runs[index], step
                pending[asyncio.ensure_future(anext(streams[index]))] = index
    finally:
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)  # each cancelled run withdraws its job
        for stream in streams:
            await stream.aclose()


async def unless_disconnected(request: Request, work: Awaitable[T]) -> Optional[T]:
    """Await `work`, or cancel it when the client disconnects first (None then). Uvicorn does not
    cancel a handler whose client left, so this is how a non-streamed search learns to stop."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if not task.done():
        task.cancel()
        with suppress(asyncio.CancelledError):
            await task
        return None
    return task.result()


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass
