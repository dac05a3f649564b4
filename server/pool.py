"""The API process's side of the workers: spawns them, sends each request to the least-loaded one,
queues the rest (up to --max-queue), notices a death (failing that worker's requests and restarting
it), and stops them once the server has drained.

All scheduling state lives on the event loop. One thread reads the workers' pipes and process
sentinels and hands what it reads to the loop, so no lock is needed and the loop never blocks on a
worker.
"""
from __future__ import annotations

import asyncio
import logging
import math
import multiprocessing
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Optional

from rain_core.config import GenerationRequest

from .errors import ApiError
from .protocol import (Cancel, Cancelled, Done, Failed, FromWorker, Ready, Shutdown, Speed, Submit, ToWorker,
                       WorkerConfig)
from .worker import main as worker_main

log = logging.getLogger("rain_serve.pool")

RESTART_DELAYS_S = (0.0, 1.0, 2.0, 5.0, 10.0, 30.0)  # by deaths since the worker was last ready
STOP_GRACE_S = 10.0
FINAL = (Done, Failed, Cancelled)


@dataclass(eq=False)
class Job:
    id: str
    request: GenerationRequest
    mode: str
    arrived: float = field(default_factory=time.monotonic)
    created: int = field(default_factory=lambda: int(time.time()))  # the response's `created`
    events: asyncio.Queue = field(default_factory=asyncio.Queue)  # Delta..., then Done or Failed
    worker: Optional[int] = None
    dispatched: Optional[float] = None
    first_token: Optional[float] = None  # when its first token arrived
    first_tokens: int = 0  # how many tokens came in that first committed set
    finished: bool = False  # its last event is queued, or nobody waits for it any more


class WorkerSlot:
    """One worker as the API sees it; its process is replaced on every restart."""

    def __init__(self, index: int, config: WorkerConfig):
        self.index = index
        self.config = config
        self.process: Optional[multiprocessing.Process] = None
        self.conn: Optional[Connection] = None
        self.ready = False
        self.pid: Optional[int] = None
        self.running: set[str] = set()
        self.speed: Optional[Speed] = None
        self.restarts = 0
        self.deaths_unready = 0

    def start(self, ctx) -> None:
        conn, child = ctx.Pipe()
        process = ctx.Process(target=worker_main, args=(self.index, self.config, child), name=f"rain-worker-{self.index}")
        process.start()
        child.close()
        self.conn, self.pid = conn, process.pid
        self.process = process  # last: the reader thread watches a slot once its process is set

    def send(self, message: ToWorker) -> None:
        try:
            self.conn.send(message)
        except (OSError, ValueError):  # it just died: the reader thread reports that
            pass

    def describe(self) -> dict:
        speed = self.speed
        return {
            "index": self.index,
            "pid": self.pid,
            "alive": self.ready,
            "running": len(self.running),
            "restarts": self.restarts,
            "vanilla_speed": speed and {
                "prefill_s_per_token": speed.prefill_s_per_token,
                "decode_s_per_token": speed.decode_s_per_token,
                "samples": speed.samples,
            },
        }


class Pool:
    def __init__(self, configs: list[WorkerConfig], max_running: int, max_queue: int):
        self.slots = [WorkerSlot(i, c) for i, c in enumerate(configs)]
        self.max_running = max_running
        self.max_queue = max_queue
        self.waiting: deque[Job] = deque()
        self.running: dict[str, Job] = {}
        self.context_length: Optional[int] = None
        self.service_s = 1.0  # recent dispatch-to-finish time, for Retry-After
        self._ctx = multiprocessing.get_context("spawn")  # CUDA and torch threads do not survive fork
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._closing = False
        self._reader = threading.Thread(target=self._read_workers, name="worker-reader", daemon=True)

    # counts for /health and the gauges ------------------------------------------------------------
    def alive(self) -> int:
        return sum(slot.ready for slot in self.slots)

    def describe(self) -> list[dict]:
        return [slot.describe() for slot in self.slots]

    # lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        for slot in self.slots:
            slot.start(self._ctx)
        self._reader.start()

    async def close(self) -> None:
        """Stop the workers; called once the server has drained its requests."""
        self._closing = True
        for job in list(self.waiting) + list(self.running.values()):
            self._fail(job, ApiError(503, "the server is shutting down", code="shutting_down"))
        for slot in self.slots:
            if slot.ready:
                slot.send(Shutdown())
            elif slot.process is not None:
                slot.process.kill()  # still loading: nothing to finish
        await asyncio.to_thread(self._join_all)

    def _join_all(self) -> None:
        deadline = time.monotonic() + STOP_GRACE_S
        for slot in self.slots:
            if slot.process is not None:
                slot.process.join(max(0.0, deadline - time.monotonic()))
                if slot.process.is_alive():
                    slot.process.kill()
                    slot.process.join()

    # requests --------------------------------------------------------------------------------
    def submit(self, job: Job) -> None:
        if self._closing:
            raise ApiError(503, "the server is shutting down", code="shutting_down")
        if not self.alive():
            raise ApiError(503, "no worker is alive; try again shortly", code="no_worker")
        if self._free_slot() is None and len(self.waiting) >= self.max_queue:
            retry = str(self.retry_after())
            raise ApiError(429, f"every worker is busy and the queue is full ({self.max_queue} waiting); "
                                f"retry in {retry} s",
                           code="queue_full", headers={"Retry-After": retry})
        self.waiting.append(job)
        self._dispatch()

    def cancel(self, job: Job) -> None:
        """The client is gone: drop the job; a running one ends at the worker's next turn."""
        if job.finished:
            return
        job.finished = True
        if job.worker is None:
            self.waiting.remove(job)
        else:
            self.slots[job.worker].send(Cancel(job.id))  # the slot frees when the worker confirms

    def retry_after(self) -> int:
        slots = max(1, self.alive() * self.max_running)
        return max(1, min(600, math.ceil(self.service_s * (len(self.waiting) + 1) / slots)))

    def _free_slot(self) -> Optional[WorkerSlot]:
        free = [s for s in self.slots if s.ready and len(s.running) < self.max_running]
        return min(free, key=lambda s: len(s.running), default=None)

    def _dispatch(self) -> None:
        while self.waiting and (slot := self._free_slot()) is not None:
            job = self.waiting.popleft()
            job.worker, job.dispatched = slot.index, time.monotonic()
            slot.running.add(job.id)
            self.running[job.id] = job
            slot.send(Submit(job.id, job.request))

    def _fail(self, job: Job, error: ApiError) -> None:
        if not job.finished:
            job.finished = True
            job.events.put_nowait(Failed(job.id, error.status, error.message, error.param, error.code))

    # what the workers say (on the loop) ---------------------------------------------------------------
    def _on_message(self, slot: WorkerSlot, message: FromWorker) -> None:
        if isinstance(message, Ready):
            slot.ready, slot.pid, slot.deaths_unready = True, message.pid, 0
            self.context_length = message.context_length
            log.info("worker %d (pid %d) is ready", slot.index, message.pid)
            self._dispatch()
        elif isinstance(message, Speed):
            slot.speed = message
        elif (job := self.running.get(message.id)) is not None:
            if isinstance(message, FINAL):
                self._release(slot, job, message)
            if not job.finished:
                job.finished = isinstance(message, FINAL)
                job.events.put_nowait(message)

    def _release(self, slot: WorkerSlot, job: Job, message: FromWorker) -> None:
        slot.running.discard(job.id)
        del self.running[job.id]
        if isinstance(message, Done):
            self.service_s = 0.8 * self.service_s + 0.2 * (time.monotonic() - job.dispatched)
        self._dispatch()

    def _on_death(self, slot: WorkerSlot, process: multiprocessing.Process) -> None:
        if slot.process is not process:
            return
        log.error("worker %d (pid %s) died with exit code %s", slot.index, process.pid, process.exitcode)
        slot.conn.close()
        slot.ready = False
        for job_id in slot.running:
            self._fail(self.running.pop(job_id),
                       ApiError(503, "the worker serving this request died; it is being restarted", code="worker_died"))
        slot.running.clear()
        delay = RESTART_DELAYS_S[min(slot.deaths_unready, len(RESTART_DELAYS_S) - 1)]
        slot.deaths_unready += 1
        self._loop.call_later(delay, self._restart, slot)
        self._dispatch()

    def _restart(self, slot: WorkerSlot) -> None:
        if not self._closing:
            slot.restarts += 1
            slot.start(self._ctx)

    # the reader thread -----------------------------------------------------------------------
    def _read_workers(self) -> None:
        """Hand every message to the loop; report a death once the dead worker's last words are in."""
        reported: set[multiprocessing.Process] = set()  # whose death was reported
        while not self._closing:
            watched = {}
            for slot in self.slots:
                process, conn = slot.process, slot.conn
                if process is not None and process not in reported and not conn.closed:  # closed: mid-restart
                    watched[conn] = watched[process.sentinel] = (slot, process, conn)
            if not watched:
                time.sleep(0.2)
                continue
            for handle in wait(list(watched), timeout=0.2):
                slot, process, conn = watched[handle]
                if process in reported or (handle is conn and self._forward(slot, conn)):
                    continue
                while conn.poll() and self._forward(slot, conn):
                    pass
                process.join(timeout=1)  # reap it, so its exit code is known
                reported.add(process)
                self._post(self._on_death, slot, process)

    def _forward(self, slot: WorkerSlot, conn: Connection) -> bool:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return False
        self._post(self._on_message, slot, message)
        return True

    def _post(self, callback, *args) -> None:
        try:
            self._loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:  # the loop is closed: the server is exiting
            pass
