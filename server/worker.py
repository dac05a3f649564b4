"""A worker process: owns one Engine and serves several requests at once by stepping their
generations in turn, one event (a search iteration or a committed set) per turn.

Between two turns it applies the messages from the API process, so a cancel stops a search within
one iteration and frees its slot. Only the API process decides when a worker ends (it drains
first), so the worker ignores SIGINT/SIGTERM and exits on Shutdown or when the API side is gone.
"""
from __future__ import annotations

import asyncio
import logging
import os
import queue
import random
import signal
import threading
import time
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection
from typing import Iterator, Optional

from rain_core.config import GenerationRequest, RainConfig, SamplingParams
from rain_core.engine import Engine, RequestError
from rain_core.events import Commit, EngineLoad, Event, Finish, Totals

from .overhead import VanillaSpeed
from .protocol import (Cancel, Cancelled, Delta, Done, Failed, FromWorker, Ready, Shutdown, Submit,
                       WorkerConfig)

log = logging.getLogger("rain_serve.worker")

ENGINE_CHECK_S = 1.0  # how often an idle vLLM worker checks that its engine is alive
CALIBRATION = GenerationRequest(
    messages=({"role": "user", "content": "Count from one to ten in words."},),
    params=SamplingParams(max_new_tokens=8),
)


@dataclass
class Job:
    id: Optional[str]  # None: a shadow vanilla re-decode that nobody waits for
    request: GenerationRequest
    events: Iterator[Event]
    compute_s: float = 0.0  # time spent stepping this generation alone


def main(index: int, config: WorkerConfig, conn: Connection) -> None:
    os.setpgid(0, 0)  # a group of its own, so that what it starts dies with it (supervisor.kill_group)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s worker-{index} %(levelname)s %(message)s")
    if config.visible_devices is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = config.visible_devices  # read when CUDA first initialises
    engine = Engine(config.engine)
    worker = BatchingWorker if config.engine.backend == "vllm" else Worker
    worker(engine, conn, config).serve()


class Worker:
    def __init__(self, engine: Engine, conn: Connection, config: WorkerConfig):
        self.engine = engine
        self.conn = conn
        self.config = config
        self.inbox: queue.SimpleQueue = queue.SimpleQueue()
        self.jobs: dict[str, Job] = {}  # in turn order
        self.shadow: Optional[Job] = None
        self.speed = VanillaSpeed()

    def serve(self) -> None:
        self.warm_up()
        threading.Thread(target=self._receive_forever, name="inbox", daemon=True).start()
        self.send(Ready(os.getpid(), self.engine.model_name, self.engine.context_length))
        self.send(self.speed.snapshot())
        while self._apply_inbox():
            job = self._next_job()
            if job is not None:
                self._step(job)

    def warm_up(self) -> None:
        """Measure vanilla speed before serving (the first pass only warms up), so the first RAIN
        request already gets an overhead figure; optionally load what RAIN needs, too."""
        for _ in range(2):
            started = time.perf_counter()
            finish = self.engine.complete(CALIBRATION)
        self.speed.observe(finish.totals, time.perf_counter() - started)
        if self.config.warm_rain:
            for judge in self.engine.judges:  # each judge's self-evaluation prefix, too
                tiny = RainConfig().with_overrides(max_iters=1, min_iters=1, judge=judge)
                self.engine.complete(replace(CALIBRATION, params=SamplingParams(max_new_tokens=1), rain=tiny))

    def send(self, message: FromWorker) -> None:
        try:
            self.conn.send(message)
        except OSError:  # the API process is gone; the inbox thread turns that into a Shutdown
            pass

    # messages ----------------------------------------------------------------------------------
    def _receive_forever(self) -> None:
        """Read the pipe all the time, so a send from the API never waits for a search iteration."""
        try:
            while True:
                self.inbox.put(self.conn.recv())
        except (EOFError, OSError):
            self.inbox.put(Shutdown())

    def _apply_inbox(self) -> bool:
        """Apply pending messages, waiting for one while idle; False once told to shut down."""
        idle = not self.jobs and self.shadow is None
        while True:
            try:
                message = self.inbox.get(block=idle)
            except queue.Empty:
                return True
            idle = False
            if isinstance(message, Shutdown):
                return False
            if isinstance(message, Submit):
                self.jobs[message.id] = Job(message.id, message.request, self.engine.generate(message.request))
            elif isinstance(message, Cancel) and message.id in self.jobs:
                self.jobs.pop(message.id).events.close()  # frees its caches now
                self.send(Cancelled(message.id))

    # stepping ----------------------------------------------------------------------------------
    def _next_job(self) -> Optional[Job]:
        """Round robin over the clients' jobs; the shadow re-decode only runs when they are all done."""
        if not self.jobs:
            return self.shadow
        job_id = next(iter(self.jobs))
        self.jobs[job_id] = job = self.jobs.pop(job_id)  # to the back of the line
        return job

    def _step(self, job: Job) -> None:
        started = time.perf_counter()
        try:
            event = next(job.events)
        except RequestError as exc:
            return self._fail(job, 400, str(exc), exc.param)
        except Exception as exc:  # the request fails, the worker and its other requests go on
            log.exception("generation %s failed", job.id or "(shadow)")
            return self._fail(job, 500, f"generation failed: {type(exc).__name__}: {exc}", code="generation_failed")
        finally:
            job.compute_s += time.perf_counter() - started
        self._deliver(job, event)

    def _deliver(self, job: Job, event: Event) -> None:
        if isinstance(event, Commit) and job.id is not None:
            self.send(Delta(job.id, event.text, len(event.token_ids), event.stats, event.finish_reason is not None,
                            event.logprobs, token_ids=tuple(event.token_ids), finish_reason=event.finish_reason))
        elif isinstance(event, Finish):
            self._finish(job, event)

    def _drop(self, job: Job) -> None:
        if job.id is None:
            self.shadow = None
        else:
            self.jobs.pop(job.id, None)

    def _fail(self, job: Job, status: int, message: str, param: Optional[str] = None, code: Optional[str] = None) -> None:
        self._drop(job)
        if job.id is not None:
            self.send(Failed(job.id, status, message, param, code))

    def _finish(self, job: Job, finish: Finish) -> None:
        self._drop(job)
        totals = finish.totals
        estimate = ratio = None
        if job.request.rain is None:
            if not job.request.resume and self.speed.observe(totals, job.compute_s):
                self.send(self.speed.snapshot())
        else:
            estimate, ratio = self._overhead(job, totals)
            self._maybe_shadow(job.request, totals.completion_tokens)
        if job.id is not None:
            self.send(Done(job.id, finish.finish_reason, totals, job.compute_s, estimate, ratio, finish.judgment,
                           self._engine_loads(totals)))

    def _overhead(self, job: Job, totals: Totals) -> tuple[Optional[float], Optional[float]]:
        """(vanilla estimate, ratio): this request's compute seconds over what vanilla decoding would
        take here. A resumed request's compute here is its own part: the prompt plus the resumed prefix
        fed, the tokens after it decoded; that is what vanilla would have done in its place."""
        resumed = len(job.request.resume.token_ids) if job.request.resume else 0
        estimate = self.speed.estimate(totals.prompt_tokens + resumed, totals.completion_tokens - resumed)
        return estimate, job.compute_s / estimate if estimate else None

    def _engine_loads(self, totals: Totals) -> dict[str, EngineLoad]:
        """One request per forward here: this request's forwards, a served judge's among them, are the
        steps since the last Done that served clients (a cancelled request's are not counted)."""
        return {self.engine.model_name: EngineLoad(totals.forward_calls, totals.forward_calls, totals.tokens_fed)}

    def _maybe_shadow(self, request: GenerationRequest, completion_tokens: int) -> None:
        """Re-decode a sampled RAIN request with vanilla decoding, to keep the speed estimate fresh
        on the prompts this worker really serves."""
        if self.shadow is None and completion_tokens > 0 and random.random() < self.config.shadow_vanilla_rate:
            vanilla = GenerationRequest(request.messages, SamplingParams(max_new_tokens=completion_tokens))
            self.shadow = Job(None, vanilla, self.engine.generate(vanilla))


class BatchingWorker(Worker):
    """A worker on the vLLM backend: every request is an asyncio task that hands its model operations
    to the engine as they come, so vLLM batches them with every other request's. A cancel cancels the
    task, which aborts what it still has in the engine. An engine that dies takes this process down,
    and the pool restarts it, as a dead transformers worker."""

    def serve(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        self.tasks: dict[str, asyncio.Task] = {}
        self.stopped = asyncio.Event()
        await self._warm_up()
        threading.Thread(target=self._receive_into, args=(loop,), name="inbox", daemon=True).start()
        self.send(Ready(os.getpid(), self.engine.model_name, self.engine.context_length))
        self.send(self.speed.snapshot())
        watch = loop.create_task(self._watch_engine())
        await self.stopped.wait()
        watch.cancel()
        for task in self.tasks.values():
            task.cancel()
        await asyncio.gather(*self.tasks.values(), return_exceptions=True)
        await self.engine.vllm.shutdown()

    async def _watch_engine(self) -> None:
        """Exit once the engine has died, busy or idle: the pool then restarts this worker (a request in
        flight notices at once; this catches an engine that dies between requests)."""
        while not self.engine.vllm.errored:
            await asyncio.sleep(ENGINE_CHECK_S)
        log.error("the vLLM engine died; the pool restarts this worker")
        os._exit(1)

    async def _warm_up(self) -> None:
        """Start the engine's batches and, optionally, what RAIN needs (the encoder) before Ready."""
        _ = [event async for event in self.engine.generate_async(CALIBRATION)]
        if self.config.warm_rain:
            tiny = RainConfig().with_overrides(max_iters=1, min_iters=1)
            request = replace(CALIBRATION, params=SamplingParams(max_new_tokens=1), rain=tiny)
            _ = [event async for event in self.engine.generate_async(request)]

    def _receive_into(self, loop: asyncio.AbstractEventLoop) -> None:
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
            job = Job(message.id, message.request, events=iter(()))
            task = asyncio.get_running_loop().create_task(self._run(job))
            # also when cancelled before it ran a step, which no handler inside it would see
            task.add_done_callback(lambda done, rid=message.id: done.cancelled() and self.send(Cancelled(rid)))
            self.tasks[message.id] = task
        elif isinstance(message, Cancel) and message.id in self.tasks:
            self.tasks[message.id].cancel()

    async def _run(self, job: Job) -> None:
        from vllm.v1.engine.exceptions import EngineDeadError

        started = time.perf_counter()
        try:
            async for event in self.engine.generate_async(job.request):
                job.compute_s = time.perf_counter() - started
                self._deliver(job, event)
        except RequestError as exc:
            self._fail(job, 400, str(exc), exc.param)
        except EngineDeadError:
            log.exception("the vLLM engine died; the pool restarts this worker")
            os._exit(1)
        except Exception as exc:  # the request fails, the worker and its other requests go on
            log.exception("generation %s failed", job.id)
            self._fail(job, 500, f"generation failed: {type(exc).__name__}: {exc}", code="generation_failed")
        finally:
            self.tasks.pop(job.id, None)

    def _drop(self, job: Job) -> None:
        self.tasks.pop(job.id, None)

    def _overhead(self, job: Job, totals: Totals) -> tuple[Optional[float], Optional[float]]:
        """Under batching a request has no compute seconds of its own: its ratio is the engine work it
        caused (tokens the engine computed for it, prefix-cache hits excluded) over a vanilla answer of
        the same length (its prompt and its answer, each token computed once); no seconds estimate."""
        vanilla = totals.prompt_tokens + totals.completion_tokens
        return None, totals.tokens_fed / vanilla if vanilla else None

    def _maybe_shadow(self, request: GenerationRequest, completion_tokens: int) -> None:
        """The ratio counts tokens, which need no fresh vanilla timings."""

    def _engine_loads(self, totals: Totals) -> dict[str, EngineLoad]:
        """Every step of each engine (the served model's, the judge's) since the previous Done,
        whichever requests it carried."""
        return self.engine.vllm.take_loads()
