"""Scheduling over the workers: each request goes to the least-loaded worker with a free slot, the
rest wait in a queue of up to --max-queue; a dead worker is restarted and its requests go back to
the front of the queue, to continue from what they had committed (up to MAX_RESUBMISSIONS times);
the workers are stopped once the server has drained.

While no worker is alive, requests wait in the queue as they would for a busy one (bounded by
--max-queue, and by --request-timeout in run.py). Only a server whose every worker is crash-looping
(supervisor.CRASH_LOOP_DEATHS deaths in a row without becoming ready) refuses them with a 503
`no_worker`, and fails those waiting: they would only wait out their timeout.

All this state lives on the event loop; the supervisor's reader thread only hands messages and
deaths over to it, so no lock is needed and the loop never blocks on a worker.
"""
from __future__ import annotations

import asyncio
import logging
import math
import multiprocessing
import time
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Optional, Sequence

from rain_core.config import GenerationRequest, Resume

from server.api.errors import ApiError
from server.workers.protocol import (HEARTBEAT_S, Cancel, Cancelled, Delta, Done, Failed, FromWorker, Heartbeat, Ready, Shutdown,
                       Speed, Submit, WorkerConfig)
from server.workers.supervisor import CRASH_LOOP_DEATHS, Reader, WorkerSlot, kill_group

log = logging.getLogger("rain_serve.pool")

RESTART_DELAYS_S = (0.0, 1.0, 2.0, 5.0, 10.0, 30.0)  # by deaths since the worker was last ready
STOP_GRACE_S = 10.0
FINAL = (Done, Failed, Cancelled)
MAX_RESUBMISSIONS = 2  # a request whose worker dies more often than this fails: it may be what kills them
LEFT_S = 1e-6  # the time budget a resumed search gets when its first worker spent it all: it ends at once
STARTUP_GUESS_S = 60.0  # how long a start takes before any worker has measured one (a vLLM engine's is about that)
MAX_RETRY_AFTER_S = 600


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
    sets: list[tuple[int, ...]] = field(default_factory=list)  # committed token sets, to resume from
    resubmissions: int = 0  # times its worker died under it and it went to another

    def attempt(self) -> GenerationRequest:
        """What to send a worker: the request itself, or after a worker died under it, the request
        resumed from the sets committed so far, its time budget less the time already spent."""
        if not self.resubmissions:
            return self.request
        rain = self.request.rain
        if rain is not None and rain.time_budget_s:
            rain = replace(rain, time_budget_s=max(rain.time_budget_s - (time.monotonic() - self.dispatched), LEFT_S))
        return replace(self.request, rain=rain, resume=Resume(tuple(self.sets)))


class Pool:
    def __init__(self, configs: list[WorkerConfig], max_running: int, max_queue: int, hang_timeout_s: float = 30.0):
        self.slots = [WorkerSlot(i, c) for i, c in enumerate(configs)]
        self.max_running = max_running
        self.max_queue = max_queue
        self.hang_timeout_s = hang_timeout_s  # a ready worker silent this long is hung: it is killed and restarted
        self.waiting: deque[Job] = deque()
        self.running: dict[str, Job] = {}
        self.context_length: Optional[int] = None
        self.service_s = 1.0  # recent dispatch-to-finish time, for Retry-After
        self._ctx = multiprocessing.get_context("spawn")  # CUDA and torch threads do not survive fork
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._closing = False
        self._reader: Optional[Reader] = None

    # counts for /health and the gauges ------------------------------------------------------------
    def alive(self) -> int:
        return sum(slot.ready for slot in self.slots)

    def describe(self) -> list[dict]:
        return [slot.describe() for slot in self.slots]

    def crash_looping(self) -> bool:
        """No worker is alive and every one keeps dying before it becomes ready."""
        return all(slot.crash_looping for slot in self.slots)

    # lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        for slot in self.slots:
            slot.start(self._ctx)
        self._reader = Reader(self.slots, self._loop, self._on_message, self._on_death)
        self._loop.call_later(HEARTBEAT_S, self._watch_hangs)

    async def close(self) -> None:
        """Stop the workers; called once the server has drained its requests."""
        self._closing = True
        self._reader.stop()
        for job in list(self.waiting) + list(self.running.values()):
            self._fail(job, ApiError(503, "the server is shutting down", code="shutting_down"))
        for slot in self.slots:
            if slot.ready:
                slot.send(Shutdown())
            elif slot.process is not None:
                slot.process.kill()  # still loading: nothing to finish
                kill_group(slot.process)
        await asyncio.to_thread(self._join_all)

    def _join_all(self) -> None:
        deadline = time.monotonic() + STOP_GRACE_S
        for slot in self.slots:
            if slot.process is not None:
                slot.process.join(max(0.0, deadline - time.monotonic()))
                if slot.process.is_alive():
                    slot.process.kill()
                    slot.process.join()
                kill_group(slot.process)

    # requests --------------------------------------------------------------------------------
    def submit(self, jobs: Sequence[Job]) -> None:
        """Admit the jobs of one request (its choices) together, or none of them."""
        if self._closing:
            raise ApiError(503, "the server is shutting down", code="shutting_down")
        if self.crash_looping():
            raise self._crash_loop_error()
        if len(jobs) > self._free_slots() + self.max_queue - len(self.waiting):
            retry = str(self.retry_after())
            busy = "every worker is busy" if self.alive() else "every worker is restarting"
            raise ApiError(429, f"{busy} and the queue is full ({self.max_queue} waiting); retry in {retry} s",
                           code="queue_full", headers={"Retry-After": retry})
        self.waiting.extend(jobs)
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
        """Seconds until a slot is likely free for one more request: the queue ahead of it served at the
        recent pace, after the first worker's restart when none is alive."""
        if self.alive():
            wait_s, slots = 0.0, self.alive() * self.max_running
        else:
            wait_s, slots = self._ready_in_s(), len(self.slots) * self.max_running
        return _seconds(wait_s + self.service_s * (len(self.waiting) + 1) / slots)

    def _ready_in_s(self) -> float:
        """How long until the first worker is expected to be ready."""
        now = time.monotonic()
        measured = [s.startup_s for s in self.slots if s.startup_s is not None]
        typical = max(measured, default=STARTUP_GUESS_S)
        return min(slot.ready_in_s(now, typical) for slot in self.slots)

    def _crash_loop_error(self) -> ApiError:
        retry = _seconds(self._ready_in_s())
        return ApiError(503, f"no worker is alive: each has died {CRASH_LOOP_DEATHS} times in a row without becoming "
                             f"ready; the next start may be ready in {retry} s", code="no_worker",
                        headers={"Retry-After": str(retry)})

    def _free_slots(self) -> int:
        return sum(self.max_running - len(s.running) for s in self.slots if s.ready)

    def _free_slot(self) -> Optional[WorkerSlot]:
        free = [s for s in self.slots if s.ready and len(s.running) < self.max_running]
        return min(free, key=lambda s: len(s.running), default=None)

    def _dispatch(self) -> None:
        while self.waiting and (slot := self._free_slot()) is not None:
            job = self.waiting.popleft()
            job.worker = slot.index
            job.dispatched = job.dispatched or time.monotonic()  # a resubmission keeps its first
            slot.running.add(job.id)
            self.running[job.id] = job
            slot.send(Submit(job.id, job.attempt()))

    def _fail(self, job: Job, error: ApiError) -> None:
        if not job.finished:
            job.finished = True
            job.events.put_nowait(Failed(job.id, error.status, error.message, error.param, error.code))

    # what the workers say (on the loop) ---------------------------------------------------------------
    def _watch_hangs(self) -> None:
        """Kill a ready worker that has said nothing for hang_timeout_s (stopped, or its event loop wedged):
        its death is then handled as any other, its requests resumed on a restarted worker."""
        if self._closing:
            return
        now = time.monotonic()
        for slot in self.slots:
            if slot.ready and slot.process is not None and now - slot.last_heard > self.hang_timeout_s:
                log.error("worker %d (pid %s) sent nothing for %.0f s: hung; killing it", slot.index, slot.pid,
                          now - slot.last_heard)
                slot.last_heard = now  # once: the reader reports its death
                kill_group(slot.process)
        self._loop.call_later(HEARTBEAT_S, self._watch_hangs)

    def _on_message(self, slot: WorkerSlot, message: FromWorker) -> None:
        slot.last_heard = time.monotonic()
        if isinstance(message, Ready):
            slot.became_ready(message.pid)
            self.context_length = message.context_length
            log.info("worker %d (pid %d) is ready", slot.index, message.pid)
            self._dispatch()
        elif isinstance(message, Speed):
            slot.speed = message
        elif isinstance(message, Heartbeat):
            pass  # heard: last_heard is all it says
        elif (job := self.running.get(message.id)) is not None:
            if isinstance(message, Delta):
                job.sets.append(message.token_ids)
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
        orphans = sorted((self.running.pop(job_id) for job_id in slot.running), key=lambda j: j.arrived, reverse=True)
        slot.running.clear()
        for job in orphans:  # the oldest ends up first in line
            self._resubmit(job)
        delay = RESTART_DELAYS_S[min(slot.deaths_unready, len(RESTART_DELAYS_S) - 1)]
        slot.deaths_unready += 1
        slot.restart_at = time.monotonic() + delay
        self._loop.call_later(delay, self._restart, slot)
        if self.crash_looping():
            log.error("every worker is crash-looping: new requests get 503 no_worker until one is ready")
            error = self._crash_loop_error()
            while self.waiting:
                self._fail(self.waiting.popleft(), error)
        self._dispatch()

    def _resubmit(self, job: Job) -> None:
        """Put a dead worker's job back at the front of the queue, unless nobody waits for it or it
        has used up its attempts."""
        if job.finished:
            return
        if job.resubmissions >= MAX_RESUBMISSIONS:
            self._fail(job, ApiError(503, f"the workers serving this request died {job.resubmissions + 1} times; "
                                          "it is not tried again", code="worker_died"))
            return
        job.resubmissions += 1
        job.worker = None
        self.waiting.appendleft(job)
        log.warning("%s: its worker died; resubmitted (%d of %d) after %d committed sets", job.id,
                    job.resubmissions, MAX_RESUBMISSIONS, len(job.sets))

    def _restart(self, slot: WorkerSlot) -> None:
        if not self._closing:
            slot.restarts += 1
            slot.start(self._ctx)


def _seconds(value: float) -> int:
    """A Retry-After: whole seconds, at least one, at most MAX_RETRY_AFTER_S."""
    return max(1, min(MAX_RETRY_AFTER_S, math.ceil(value)))
