"""One admitted chat completion, from the pool's events to the client's last byte: enforces
--request-timeout, cancels the job when the client goes away, records the metrics."""
from __future__ import annotations

import asyncio
import json
import time
from contextlib import contextmanager, suppress
from typing import AsyncIterator, Awaitable, Optional, TypeVar, Union

from starlette.requests import Request

from . import render
from .errors import ApiError
from .metrics import Metrics
from .pool import Job, Pool
from .protocol import Delta, Done, Failed

T = TypeVar("T")


class ChatRun:
    def __init__(self, pool: Pool, metrics: Metrics, job: Job, model: str, timeout_s: float):
        self.pool, self.metrics, self.job, self.model = pool, metrics, job, model
        self.deadline = job.arrived + timeout_s
        self.timeout_s = timeout_s

    async def next_event(self) -> Union[Delta, Done]:
        try:
            message = await asyncio.wait_for(self.job.events.get(), self.deadline - time.monotonic())
        except asyncio.TimeoutError:
            raise ApiError(504, f"the request ran longer than the server's --request-timeout "
                                f"({self.timeout_s:g} s)", code="request_timeout") from None
        if isinstance(message, Failed):
            raise ApiError(message.status, message.message, message.param, message.code)
        if isinstance(message, Delta) and message.tokens and self.job.first_token is None:
            self.job.first_token, self.job.first_tokens = time.monotonic(), message.tokens
        if isinstance(message, Done):
            self.metrics.finished(self.job, message, render.finish_reason(message))
        return message

    @contextmanager
    def _outcome(self):
        """Count a request that ends without a Done, and withdraw it from its worker."""
        try:
            yield
        except ApiError:
            self.metrics.ended(self.job, "error")
            raise
        except BaseException:  # cancelled: the client went away
            self.metrics.ended(self.job, "cancelled")
            raise
        finally:
            self.pool.cancel(self.job)  # a no-op once it has finished

    async def complete(self) -> dict:
        texts: list[str] = []
        commits: Optional[list[dict]] = [] if self.job.mode == "rain" else None
        with self._outcome():
            while isinstance(message := await self.next_event(), Delta):
                texts.append(message.text)
                if commits is not None:
                    commits.append(render.commit_stats(message))
        return render.completion(self.job, self.model, "".join(texts), message, commits)

    async def stream(self, include_usage: bool) -> AsyncIterator[str]:
        chunks = render.Chunks(self.job, self.model, include_usage)
        yield chunks.role()
        try:
            with self._outcome():
                finished = False
                while isinstance(message := await self.next_event(), Delta):
                    if message.finishes:  # Done follows at once: the last content chunk carries it
                        done = await self.next_event()
                        assert isinstance(done, Done), "a worker sends Done right after the last set"
                        yield chunks.content(message, done)
                        message, finished = done, True
                        break
                    yield chunks.content(message)
            if not finished:  # a generation stopped by its cancel flag ends without a last set
                yield chunks.finish(message)
            if include_usage:
                yield chunks.usage(message)
        except ApiError as error:  # the stream has started: the error goes in-band
            self.metrics.error(error.type)
            yield json.dumps(error.body())
        yield "[DONE]"


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
