"""Tensor parallelism: one model split over K ranks, driven from rank 0 as if it were one ModelRunner.

Rank 0 is the engine's own process and runs the search. Ranks 1..K-1 are follower processes
(`python -m rain_core.tp`) that each hold a shard of the model (transformers' `tp_plan="auto"`).
Every operation that changes a cache (new, clone, free, truncate, forward) is pickled once on rank 0,
written to each follower's stdin and then run locally; followers run the same operations in the
same order, so cache handles and every rank's shard of every cache stay identical. torch.distributed
(gloo on CPU, NCCL on CUDA) only carries the model's own collectives inside `forward`.

Failure: a follower reads EOF when rank 0 dies, and exits. When a follower dies, rank 0 kills the
others (so a collective in flight fails instead of hanging), answers every later operation with
RankFailure, and ends its own process after a short grace (RAIN_TP_EXIT_ON_FAILURE=0 turns that
off), so a server worker goes down and its pool restarts it.
"""
from __future__ import annotations

import atexit
import logging
import math
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
from datetime import timedelta
from typing import Optional

import torch
import torch.distributed as dist

from .config import default_threads
from .models import ModelSource, load_model, weights_dir
from .runner import ModelRunner

log = logging.getLogger(__name__)

TIMEOUT_S = float(os.environ.get("RAIN_TP_TIMEOUT_S", "300"))  # any one collective, loading included
EXIT_GRACE_S = 2.0  # lets the worker report the failed request before the process ends
EXIT_CODE = 75
STOP_WAIT_S = 10.0


class RankFailure(RuntimeError):
    """A rank died or failed: the tensor-parallel group is unusable."""


def valid_tp_sizes(heads: int, kv_heads: int) -> list[int]:
    return [k for k in range(1, math.gcd(heads, kv_heads) + 1) if heads % k == 0 and kv_heads % k == 0]


def check_tensor_parallel(source: ModelSource, tp: int, device: str = "cpu") -> None:
    """Raise ValueError, before anything is spawned, when `source` cannot run over `tp` ranks."""
    from transformers import AutoConfig

    if tp < 1:
        raise ValueError(f"--tp must be at least 1, not {tp}")
    path = weights_dir(source)  # every rank reads these: a GGUF is de-quantised once, not once per rank
    if path is None:
        raise OSError("tensor parallelism over a GGUF model needs a writable RAIN_CACHE_DIR for its conversion")
    config = AutoConfig.from_pretrained(path)
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    if not getattr(config, "base_model_tp_plan", None):
        raise ValueError(f"{source.name} ({config.model_type}) has no tensor-parallel plan in transformers; "
                         f"it can only run with --tp 1")
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    if heads % tp or kv_heads % tp:
        valid = ", ".join(map(str, valid_tp_sizes(heads, kv_heads)))
        raise ValueError(f"{source.name} cannot be split over --tp {tp}: its {heads} attention heads and {kv_heads} "
                         f"key/value heads must both divide evenly among the ranks; --tp values that work: {valid}")
    kind = torch.device(device).type
    if kind == "cuda":
        base = torch.device(device).index or 0
        if torch.cuda.device_count() < base + tp:
            raise ValueError(f"--tp {tp} on {device} needs GPUs {base}..{base + tp - 1}; "
                             f"{torch.cuda.device_count()} are visible")
    elif kind != "cpu":
        raise ValueError(f"tensor parallelism runs on cpu or cuda, not {device!r}")
    elif torch.cuda.is_available():  # transformers binds ranks to the accelerator it finds
        raise ValueError("tensor parallelism on cpu needs CUDA hidden (CUDA_VISIBLE_DEVICES=''); or use --device cuda")


def start_tensor_parallel(source: ModelSource, config) -> "TensorParallelRunner":
    """Validate, spawn ranks 1..K-1, load rank 0's shard here; return rank 0's runner."""
    k, device = config.tp, torch.device(config.device)
    check_tensor_parallel(source, k, config.device)
    threads = config.threads
    if device.type == "cpu" and not threads:  # K ranks share the cores
        threads = default_threads(k)
        torch.set_num_threads(threads)
    store = dist.TCPStore("127.0.0.1", 0, k, is_master=True, timeout=timedelta(seconds=TIMEOUT_S), wait_for_workers=False)
    spec = dict(source=source, dtype=config.dtype, world=k, port=store.port, threads=threads, device=device.type,
                base=(device.index or 0) if device.type == "cuda" else 0)
    runner = TensorParallelRunner()
    try:
        for rank in range(1, k):
            proc = subprocess.Popen([sys.executable, "-m", "rain_core.tp", f"--rank={rank}"], stdin=subprocess.PIPE)
            runner.watch(proc)
            pickle.dump({**spec, "rank": rank}, proc.stdin)
            proc.stdin.flush()
        runner.attach(_load_rank(0, spec, store))
    except BaseException as exc:
        failure = runner.failure
        runner.close()
        if failure:
            raise RankFailure(failure) from exc
        raise
    return runner


def _load_rank(rank: int, spec: dict, store) -> ModelRunner:
    local_rank = spec["base"] + rank
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(local_rank), WORLD_SIZE=str(spec["world"]))  # read by transformers
    cuda = spec["device"] == "cuda"
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if cuda else "gloo", store=store, rank=rank, world_size=spec["world"],
                            timeout=timedelta(seconds=TIMEOUT_S), device_id=device if cuda else None)
    return ModelRunner(load_model(spec["source"], str(device), spec["dtype"], tp_plan="auto"), device)


def _apply(runner: ModelRunner, op: str, args: tuple) -> None:
    """Run on a follower the operation that rank 0 has run (or is running) on its own runner."""
    if op in ("new", "clone"):
        handle = runner.new_cache() if op == "new" else runner.clone_cache(args[0])
        if handle != args[-1]:
            raise RankFailure(f"cache handles diverged: {handle} here, {args[-1]} on rank 0")
    elif op == "free":
        runner.free_cache(*args)
    elif op == "truncate":
        runner.truncate(*args)
    elif op == "forward":
        handle, *arrays = args
        runner.forward(handle, *(None if a is None else torch.from_numpy(a).to(runner.device) for a in arrays))
    else:
        raise RankFailure(f"unknown operation {op!r}")


class TensorParallelRunner:
    """ModelRunner's interface on rank 0: each operation runs on every rank, in the same order."""

    def __init__(self):
        self.followers: list[subprocess.Popen] = []
        self.failure: Optional[str] = None
        self._closing = False
        self._lock = threading.RLock()
        self._saved_env = {name: os.environ.get(name) for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE")}
        atexit.register(self.close)

    def watch(self, proc: subprocess.Popen) -> None:
        self.followers.append(proc)
        threading.Thread(target=self._watch, args=(len(self.followers), proc), daemon=True).start()

    def attach(self, local: ModelRunner) -> None:
        self.local, self.tp = local, len(self.followers) + 1
        self.device, self.vocab_size, self.max_positions = local.device, local.vocab_size, local.max_positions

    # the ModelRunner interface ----------------------------------------------------------------
    def new_cache(self) -> int:
        with self._lock:
            handle = self._local("new", self.local.new_cache)  # no collective: rank 0 may go first
            self._send("new", (handle,))
            return handle

    def clone_cache(self, handle: int) -> int:
        with self._lock:
            self._known(handle)
            new = self._local("clone", lambda: self.local.clone_cache(handle))
            self._send("clone", (handle, new))
            return new

    def free_cache(self, handle: int) -> None:
        with self._lock:
            if handle in self.local.caches and self.failure is None:  # after a failure: nothing to free
                self._send("free", (handle,))
                self.local.free_cache(handle)

    def cache_length(self, handle: int) -> int:
        return self.local.cache_length(handle)  # the same on every rank

    def truncate(self, handle: int, length: int) -> None:
        with self._lock:
            self._send("truncate", (self._known(handle), int(length)))
            self._local("truncate", lambda: self.local.truncate(handle, length))

    def forward(self, handle, input_ids, position_ids=None, attention_mask=None, logits_at=None, totals=None):
        with self._lock:
            tensors = (input_ids.reshape(1, -1), position_ids, attention_mask, logits_at)
            self._send("forward", (self._known(handle), *(None if t is None else t.cpu().numpy() for t in tensors)))
            return self._local("forward", lambda: self.local.forward(
                handle, input_ids, position_ids, attention_mask, logits_at, totals))

    # protocol ---------------------------------------------------------------------------------
    def _known(self, handle: int) -> int:
        if self.failure is not None:
            raise RankFailure(self.failure)
        if handle not in self.local.caches:  # refused before any rank acts on it
            raise KeyError(f"no cache {handle}")
        return handle

    def _send(self, op: str, args: tuple) -> None:
        if self.failure is not None:
            raise RankFailure(self.failure)
        message = pickle.dumps((op, args), protocol=pickle.HIGHEST_PROTOCOL)
        for rank, proc in enumerate(self.followers, start=1):
            try:
                proc.stdin.write(message)
                proc.stdin.flush()
            except (OSError, ValueError) as exc:
                raise RankFailure(self._fail(self._dead() or f"rank {rank} is gone: {exc}")) from exc

    def _local(self, op: str, run):
        if self.failure is not None:
            raise RankFailure(self.failure)
        try:
            return run()
        except Exception as exc:  # the ranks may no longer agree: the group cannot go on
            raise RankFailure(self._fail(self._dead() or f"rank 0 failed in {op}: {type(exc).__name__}: {exc}")) from exc

    def _dead(self, wait_s: float = 1.0) -> Optional[str]:
        """Which follower died, when one did (a collective fails a moment before its watcher sees it)."""
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            for rank, proc in enumerate(self.followers, start=1):
                if proc.poll() is not None:
                    return f"tensor-parallel rank {rank} (pid {proc.pid}) died with exit code {proc.returncode}"
            time.sleep(0.05)
        return None

    def _watch(self, rank: int, proc: subprocess.Popen) -> None:
        code = proc.wait()
        if not self._closing:
            self._fail(f"tensor-parallel rank {rank} (pid {proc.pid}) died with exit code {code}")

    def _fail(self, reason: str) -> str:
        if self.failure is None:
            self.failure = reason
            log.error("%s; stopping the tensor-parallel group", reason)
            for proc in self.followers:  # a collective in flight on rank 0 then fails instead of waiting
                proc.kill()
            if not self._closing and os.environ.get("RAIN_TP_EXIT_ON_FAILURE", "1") != "0":
                threading.Timer(EXIT_GRACE_S, _exit_now, args=(reason,)).start()
        return self.failure

    def close(self) -> None:
        """Stop the followers and leave the process group; the runner is unusable afterwards."""
        if self._closing:
            return
        self._closing = True
        locked = self._lock.acquire(timeout=STOP_WAIT_S)
        self.failure = self.failure or "the tensor-parallel runner is closed"
        for proc in self.followers:
            try:
                proc.stdin.write(pickle.dumps(("stop", ())))
                proc.stdin.close()
            except (OSError, ValueError):
                pass
        deadline = time.monotonic() + STOP_WAIT_S
        for proc in self.followers:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
        if dist.is_initialized():
            dist.destroy_process_group()
        for name, value in self._saved_env.items():
            os.environ.pop(name, None) if value is None else os.environ.__setitem__(name, value)
        if locked:
            self._lock.release()
        atexit.unregister(self.close)


def _exit_now(reason: str) -> None:
    log.critical("exiting: %s", reason)
    logging.shutdown()
    os._exit(EXIT_CODE)


def _follower_main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl-C is rank 0's to handle
    stdin = sys.stdin.buffer
    spec = pickle.load(stdin)
    parent = os.getppid()
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()
    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # rank 0 already says it all
    hf_logging.disable_progress_bar()
    store = dist.TCPStore("127.0.0.1", spec["port"], spec["world"], is_master=False, timeout=timedelta(seconds=TIMEOUT_S))
    runner = _load_rank(spec["rank"], spec, store)
    while True:
        try:
            op, args = pickle.load(stdin)
        except EOFError:  # rank 0 is gone
            os._exit(0)
        if op == "stop":
            break
        try:
            _apply(runner, op, args)
        except BaseException:
            log.exception("rank %d failed in %s", spec["rank"], op)
            os._exit(EXIT_CODE)
    dist.destroy_process_group()


def _watch_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(0)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s tp-follower %(levelname)s %(message)s")
    _follower_main()
