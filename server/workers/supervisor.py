"""The worker processes as the API process sees them: a slot per worker whose process is replaced
on every restart, and the one thread that reads all their pipes and notices their deaths."""
from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import threading
import time
from multiprocessing.connection import Connection, wait
from typing import Callable, Optional

from server.workers.protocol import FromWorker, Speed, ToWorker, WorkerConfig
from server.workers.worker import main as worker_main

# A worker is crash-looping once it has died this many times in a row without becoming ready in
# between: the first death may be a kill, the two after it are restarts that failed to start.
CRASH_LOOP_DEATHS = 3


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
        self.deaths_unready = 0  # deaths since it was last ready
        self.spawned: Optional[float] = None  # when its current process started (monotonic)
        self.startup_s: Optional[float] = None  # how long its last start took, spawn to Ready
        self.restart_at: Optional[float] = None  # when its pending restart begins (monotonic); None: none pending
        self.last_heard: float = 0.0  # when its current process last sent anything (monotonic)

    @property
    def crash_looping(self) -> bool:
        return not self.ready and self.deaths_unready >= CRASH_LOOP_DEATHS

    @property
    def state(self) -> str:
        """ready; starting (its first start); restarting (dead or loading again); crash_loop."""
        if self.ready:
            return "ready"
        if self.crash_looping:
            return "crash_loop"
        return "restarting" if self.restarts or self.deaths_unready else "starting"

    def became_ready(self, pid: int) -> None:
        self.ready, self.pid, self.deaths_unready = True, pid, 0
        self.last_heard = time.monotonic()
        self.startup_s = time.monotonic() - self.spawned

    def ready_in_s(self, now: float, typical_startup_s: float) -> float:
        """How long until this worker is expected to be ready: its pending restart's delay plus a start as
        long as its last one, or what is left of the start under way (at least a second once overdue)."""
        if self.ready:
            return 0.0
        startup = self.startup_s or typical_startup_s
        if self.restart_at is not None:
            return max(0.0, self.restart_at - now) + startup
        return max(1.0, self.spawned + startup - now)

    def start(self, ctx) -> None:
        self.restart_at = None
        self.spawned = time.monotonic()
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
            "state": self.state,
            "running": len(self.running),
            "restarts": self.restarts,
            "vanilla_speed": speed and {
                "prefill_s_per_token": speed.prefill_s_per_token,
                "decode_s_per_token": speed.decode_s_per_token,
                "samples": speed.samples,
            },
        }


class Reader(threading.Thread):
    """Hands every worker message to the loop (`on_message(slot, message)`), and a death once the dead
    worker's last messages are in (`on_death(slot, process)`); each death is reported once."""

    def __init__(self, slots: list[WorkerSlot], loop: asyncio.AbstractEventLoop,
                 on_message: Callable[[WorkerSlot, FromWorker], None],
                 on_death: Callable[[WorkerSlot, multiprocessing.Process], None]):
        super().__init__(name="worker-reader", daemon=True)
        self.slots, self.loop, self.on_message, self.on_death = slots, loop, on_message, on_death
        self._stopped = False
        self.start()

    def stop(self) -> None:
        self._stopped = True

    def run(self) -> None:
        reported: set[multiprocessing.Process] = set()
        while not self._stopped:
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
                kill_group(process)
                reported.add(process)
                self._post(self.on_death, slot, process)

    def _forward(self, slot: WorkerSlot, conn: Connection) -> bool:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return False
        self._post(self.on_message, slot, message)
        return True

    def _post(self, callback, *args) -> None:
        try:
            self.loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:  # the loop is closed: the server is exiting
            pass


def kill_group(process: multiprocessing.Process) -> None:
    """Kill what a worker started (vLLM's engine processes), which outlive a worker killed with SIGKILL:
    each worker leads a process group of its own (worker.main)."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):  # nothing left of it
        pass
