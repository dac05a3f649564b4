"""A worker process: owns one Engine (one backend with its models) and serves many requests at once.

One loop for every backend: each request is an asyncio task that iterates the engine's `generate`, so
its model operations reach the backend as they come (vLLM batches them with every other request's; the
transformers backend runs them in turn on its model thread). A Cancel cancels the task, which frees what
the request holds in the backend. An engine that dies takes this process down, and the pool restarts it
and resubmits its requests. Only the API process decides when a worker ends (it drains first), so the
worker ignores SIGINT/SIGTERM and exits on Shutdown or when the API side is gone.
"""
from __future__ import annotations

import asyncio
import logging
import os
import random
import signal
import threading
import time
from dataclasses import dataclass, field, replace
from multiprocessing.connection import Connection
from typing import Optional

from rain_core.backends.base import EngineDead
from rain_core.chat.prompt import RequestError
from rain_core.config import GenerationRequest, RainConfig, SamplingParams
from rain_core.engine import Engine
from rain_core.events import Commit, Event, Finish, Totals

from server.workers.overhead import VanillaSpeed, wait_per_call
from server.workers.protocol import (HEARTBEAT_S, Cancel, Cancelled, Delta, Done, Failed, FromWorker, Heartbeat, Ready, Shutdown,
                       Submit, WorkerConfig)

log = logging.getLogger("rain_serve.worker")

ENGINE_CHECK_S = 1.0  # how often the worker checks that its engines are alive
CALIBRATION = GenerationRequest(
    messages=({"role": "user", "content": "Count from one to ten in words."},),
    params=SamplingParams(max_new_tokens=8),
)


@dataclass
class Job:
    """One request in this worker, from its Submit to its end."""

    id: Optional[str]  # None: a shadow vanilla re-decode that nobody waits for
    request: GenerationRequest
    received: float = field(default_factory=time.perf_counter)
    last: Optional[Delta] = None  # the set that ended the answer, sent with its Done

    def elapsed(self) -> float:
        return time.perf_counter() - self.received


def main(index: int, config: WorkerConfig, conn: Connection) -> None:
    os.setpgid(0, 0)  # a group of its own, so that what it starts dies with it (supervisor.kill_group)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s worker-{index} %(levelname)s %(message)s")
    if config.visible_devices is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = config.visible_devices  # read when CUDA first initialises
    Worker(Engine(config.engine), conn, config).serve()


class Worker:
    def __init__(self, engine: Engine, conn: Connection, config: WorkerConfig):
        self.engine, self.conn, self.config = engine, conn, config
        self.speed = VanillaSpeed()
        self.tasks: dict[str, asyncio.Task] = {}
        self.shadow: Optional[asyncio.Task] = None

    def serve(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        self.stopped = asyncio.Event()
        await self._warm_up()
        threading.Thread(target=self._receive_into, args=(loop,), name="inbox", daemon=True).start()
        self.send(Ready(os.getpid(), self.engine.model_name, self.engine.context_length))
        self.send(self.speed.snapshot())
        watches = [loop.create_task(self._watch_engine()), loop.create_task(self._beat())]
        await self.stopped.wait()
        for watch in watches:
            watch.cancel()
        pending = [*self.tasks.values(), *([self.shadow] if self.shadow else [])]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        await self.engine.backend.shutdown()

    async def _warm_up(self) -> None:
        """Measure vanilla latency before serving (the first pass only warms up), so the first RAIN request
        already gets an overhead figure; optionally load what RAIN needs too (the encoder, each judge's prefix)."""
        for _ in range(2):
            finish = await self._events_to_end(CALIBRATION)
        self.speed.observe(finish.totals)
        if self.config.warm_rain:
            for judge in self.engine.backend.judges:
                tiny = RainConfig().with_overrides(max_iters=1, min_iters=1, judge=judge)
                await self._events_to_end(replace(CALIBRATION, params=SamplingParams(max_new_tokens=1), rain=tiny))

    async def _events_to_end(self, request: GenerationRequest) -> Finish:
        async for event in self.engine.generate(request):
            pass
        return event

    async def _watch_engine(self) -> None:
        """Exit once an engine has died, busy or idle: the pool then restarts this worker (a request in
        flight notices at once; this catches an engine that dies between requests)."""
        while not self.engine.backend.errored:
            await asyncio.sleep(ENGINE_CHECK_S)
        log.error("an engine of this worker died; the pool restarts it")
        os._exit(1)

    async def _beat(self) -> None:
        """Tell the API process this worker runs; a stopped or wedged one falls silent and is restarted."""
        while True:
            self.send(Heartbeat())
            await asyncio.sleep(HEARTBEAT_S)

    def send(self, message: FromWorker) -> None:
        try:
            self.conn.send(message)
        except OSError:  # the API process is gone; the inbox thread turns that into a Shutdown
            pass

    # messages ----------------------------------------------------------------------------------
    def _receive_into(self, loop: asyncio.AbstractEventLoop) -> None:
        """Read the pipe all the time, so a send from the API never waits for the event loop."""
        try:
            while True:
                message = self.conn.recv()
                loop.call_soon_threadsafe(self._apply, message)
        except (EOFError, OSError):
            loop.call_soon_threadsafe(self._apply, Shutdown())

    def _apply(self, message) -> None:
        if isinstance(message, Shutdown):
            self.stopped.set()
        elif isinstance(message, Submit):
            task = asyncio.get_running_loop().create_task(self._run(Job(message.id, message.request)))
            # also when cancelled before it ran a step, which no handler inside it would see
            task.add_done_callback(lambda done, rid=message.id: done.cancelled() and self.send(Cancelled(rid)))
            self.tasks[message.id] = task
        elif isinstance(message, Cancel) and message.id in self.tasks:
            self.tasks[message.id].cancel()

    # one request -------------------------------------------------------------------------------
    async def _run(self, job: Job) -> None:
        try:
            async for event in self.engine.generate(job.request):
                self._deliver(job, event)
        except RequestError as exc:
            self._fail(job, 400, str(exc), exc.param)
        except EngineDead:
            log.exception("an engine of this worker died; the pool restarts it")
            os._exit(1)
        except Exception as exc:  # the request fails, the worker and its other requests go on
            log.exception("generation %s failed", job.id or "(shadow)")
            self._fail(job, 500, f"generation failed: {type(exc).__name__}: {exc}", code="generation_failed")
        finally:
            if job.id is not None:
                self.tasks.pop(job.id, None)

    def _deliver(self, job: Job, event: Event) -> None:
        if isinstance(event, Commit) and job.id is not None:
            delta = Delta(job.id, event.text, tuple(event.token_ids), event.stats, event.logprobs)
            if event.finish_reason is None:
                self.send(delta)
            else:
                job.last = delta
        elif isinstance(event, Finish):
            self._finish(job, event)

    def _fail(self, job: Job, status: int, message: str, param: Optional[str] = None, code: Optional[str] = None) -> None:
        if job.id is not None:
            self.send(Failed(job.id, status, message, param, code))

    def _finish(self, job: Job, finish: Finish) -> None:
        totals, worker_s = finish.totals, job.elapsed()
        estimate = ratio = None
        if job.request.rain is None:
            if not job.request.resume and self.speed.observe(totals):
                self.send(self.speed.snapshot())
        else:
            estimate = self._vanilla_estimate(job.request, totals)
            ratio = worker_s / estimate if estimate else None
            self._maybe_shadow(job.request, totals.completion_tokens)
        if job.id is not None:
            self.send(Done(job.id, finish.finish_reason, totals, job.last, worker_s, estimate, ratio, finish.judgment,
                           self.engine.backend.take_loads(), self._work_ratios(totals)))

    def _vanilla_estimate(self, request: GenerationRequest, totals: Totals) -> Optional[float]:
        """How long vanilla decoding of the same prompt and answer length takes here now, under the load this
        request met. A resumed request's part here is the prompt plus the resumed prefix fed, the tokens after
        it decoded."""
        resumed = len(request.resume.token_ids) if request.resume else 0
        return self.speed.estimate(totals.prompt_tokens + resumed, totals.completion_tokens - resumed,
                                   wait_per_call(totals))

    def _work_ratios(self, totals: Totals) -> dict[str, float]:
        """Tokens each model computed for this request over a vanilla answer's (its prompt and its answer,
        each token computed once)."""
        vanilla = totals.prompt_tokens + totals.completion_tokens
        if not vanilla:
            return {}
        ratios = {self.engine.model_name: totals.tokens_fed / vanilla}
        if totals.judge_tokens_fed:
            ratios[self.engine.backend.judges["served"]] = totals.judge_tokens_fed / vanilla
        return ratios

    def _maybe_shadow(self, request: GenerationRequest, completion_tokens: int) -> None:
        """Re-decode a sampled judged request with vanilla decoding right away, so the vanilla latency estimate
        follows the load of the moment on the prompts this worker really serves (on vLLM the shadow shares the
        engine's batches, so it is cheap)."""
        if self.shadow is None and completion_tokens > 0 and random.random() < self.config.shadow_vanilla_rate:
            vanilla = GenerationRequest(request.messages, SamplingParams(max_new_tokens=completion_tokens),
                                        prompt_text=request.prompt_text, cache_salt=request.cache_salt)
            self.shadow = asyncio.get_running_loop().create_task(self._run(Job(None, vanilla)))
            self.shadow.add_done_callback(lambda _: setattr(self, "shadow", None))
