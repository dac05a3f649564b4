"""Soak: K clients for M minutes against one server while faults hit its workers, counting lost requests.

    python -m bench.soak [--backend vllm|transformers] [--judge-model M] [--clients 4] [--minutes 10]
                         [--fault-every 30] [--workers 2] [--request-timeout 60] [--base-url URL] [--out FILE]

Without --base-url it starts `rain-serve` on a free loopback port (the embedded SmolLM2, vanilla by
default, on --backend, the server's own default unless given) and stops it afterwards. Each client
sends, at random: streamed and non-streamed requests, vanilla and RAIN with tiny budgets, streams it
abandons after a few chunks or non-streamed requests it gives up on after a fraction of a second,
prompts too long for the context, and malformed bodies; told to retry, it waits what Retry-After says.
Every --fault-every seconds a fault hits a worker that /health lists as alive (a busy one first),
the kinds in turn (FAULTS; those the backend has): SIGKILL of the worker; SIGKILL of its vLLM
engine-core process alone; SIGKILL of its judge's engine-core process (--judge-model); SIGSTOP of the
worker, then SIGCONT once --request-timeout and 5 s more have passed. The pids come from /health and
/proc, so the server must run on this machine. A prober times /health all along.

A request is *lost* when it got neither a complete answer (exactly one finish, then [DONE]) nor an
error it was entitled to: 400/404/413 for a bad request (the client's fault); 429, 503 or 504 in the
OpenAI error shape for a good one (ours). A transport error, a 500, a cut stream, a second finish are
losses. The target is 0. Vanilla answers are greedy, so every answer to the same vanilla request must
also be the same text (`mismatched` counts those that are not: text repeated or changed across a
resume). The report also holds the RSS of the API process and of each worker (its own, and with the
engine processes of its group) at the start and at the end.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import httpx

from server.config import ServerConfig

MODEL = "smollm2"
TINY_RAIN = {"max_iters": 1, "min_iters": 1}
PROMPTS = ("Write a short story about a lighthouse keeper.", "Explain how a bicycle gear works.",
           "List five rivers of Europe and one fact about each.")
ENTITLED_GOOD = {429, 503, 504}  # refused while busy or crash-looping, timed out, or out of attempts
ENTITLED_BAD = {400, 404, 413}
IN_BAND_STATUS = {"rate_limit_error": 429, "service_unavailable_error": 503, "timeout_error": 504}
KINDS = ("stream", "plain", "stream_rain", "plain_rain", "abandon_stream", "abandon_plain", "oversize", "malformed")
GOOD_KINDS = frozenset(KINDS) - {"oversize", "malformed"}
MALFORMED = (b'{"model": "smollm2", "messages": [', b'{"model": "smollm2", "messages": "hi"}',
             b'{"model": "smollm2", "messages": [{"role": "user", "content": "hi"}], "max_tokens": -3}',
             b'{"model": "smollm2", "messages": [{"role": "user", "content": "hi"}], "best_of": 3}')
FAULTS = ("kill_worker", "kill_engine", "kill_judge_engine", "stop_worker")
STOP_BEYOND_TIMEOUT_S = 5.0  # a stopped worker stays stopped this much longer than --request-timeout
CLIENT_TIMEOUT_S = 900  # longer than any --request-timeout here: the server, not the client, gives up
START_TIMEOUT_S = 600  # a vLLM server with a judge starts two engines per worker


@dataclass
class Outcome:
    kind: str
    result: str  # "completed", "abandoned", "error <status> <code>", or "lost: <why>"
    text: Optional[str] = None  # a completed vanilla answer's text, to compare across repeats
    key: Optional[str] = None  # what identifies the same vanilla request
    resumed: bool = False  # completed after its worker died under it
    retry_after: Optional[float] = None  # what a 429 or 503 told the client to wait
    started: float = 0.0  # monotonic
    ended: float = 0.0
    detail: Optional[str] = None  # what the client saw, where the request was lost to an exception

    @property
    def lost(self) -> bool:
        return self.result.startswith("lost")


@dataclass
class Fault:
    at_s: float  # since the soak started
    kind: str
    worker: int
    pid: int  # the process signalled


@dataclass
class Memory:
    """RSS in MiB: the API process (None when the soak did not start it) and each worker by index, its own
    process and its whole process group (the worker with the engine processes it started)."""

    api_mb: Optional[float]
    workers: list[dict] = field(default_factory=list)


@dataclass
class Report:
    backend: Optional[str]
    clients: int
    seconds: float
    faults: dict[str, int]
    sent: int
    completed: int
    resumed: int  # completed answers whose worker (or its engine) died under them
    completed_across_fault: int  # completed answers that were in flight when a fault hit the server
    abandoned: int
    errors_client: int  # errors a bad request earned
    errors_ours: int  # errors a good request got: busy, crash-looping, out of attempts or out of time
    errors_ours_past_timeout: int  # of those, the 504s past --request-timeout
    failed: dict[str, int]
    lost: dict[str, int]
    lost_total: int
    mismatched: int
    greedy_repeats: int  # completed vanilla answers compared with an earlier answer to the same request
    health_p50_ms: float
    health_p99_ms: float
    health_probes: int
    health_failures: int  # probes that got no answer at all
    retry_after_s: list[float]
    lost_log: list[dict] = field(default_factory=list)  # each lost request: kind, when, how long, why
    health_failure_log: list[str] = field(default_factory=list)  # each unanswered probe: when, and the exception
    memory_start: Optional[Memory] = None
    memory_end: Optional[Memory] = None
    fault_log: list[Fault] = field(default_factory=list)
    by_kind: dict[str, dict[str, int]] = field(default_factory=dict)


# judging one response ----------------------------------------------------------------------------
def json_body(raw) -> object:
    """The parsed body, or None where it is not JSON (which the judges count as lost)."""
    try:
        return json.loads(raw)
    except ValueError:
        return None


def error_result(status: int, body: object, entitled: set[int]) -> str:
    """An error response: entitled when its status is and it has the OpenAI shape."""
    error = body.get("error") if isinstance(body, dict) else None
    shaped = isinstance(error, dict) and {"message", "type", "param", "code"} <= error.keys()
    if status in entitled and shaped:
        return f"error {status} {error['code'] or error['type']}"  # a body that is not JSON has no code
    return f"lost: status {status}" + ("" if shaped else " without an OpenAI error")


@dataclass
class Judged:
    result: str
    text: Optional[str] = None
    resumed: bool = False


def judge_plain(status: int, body: object, good: bool) -> Judged:
    """A non-streamed response."""
    if status != 200:
        return Judged(error_result(status, body, ENTITLED_GOOD if good else ENTITLED_BAD))
    if not good or not isinstance(body, dict):
        return Judged("lost: a bad request was answered" if not good else "lost: a 200 without JSON")
    choice = body["choices"][0]
    if choice["finish_reason"] not in ("stop", "length") or "usage" not in body:
        return Judged("lost: incomplete answer")
    return Judged("completed", choice["message"]["content"], body["rain"]["resubmissions"] > 0)


def judge_stream(payloads: list[str]) -> Judged:
    """A streamed response's data payloads: one finish and [DONE], or an in-band entitled error."""
    if not payloads or payloads[-1] != "[DONE]" or payloads.count("[DONE]") != 1:
        return Judged("lost: stream cut before [DONE]")
    chunks = [json_body(p) for p in payloads[:-1]]
    if not all(isinstance(c, dict) for c in chunks):
        return Judged("lost: a payload that is not a JSON object")
    if chunks and "error" in chunks[-1]:  # in-band: the status it would have had
        error = chunks[-1]["error"]
        status = IN_BAND_STATUS.get(error.get("type"), 500) if isinstance(error, dict) else 500
        return Judged(error_result(status, chunks[-1], ENTITLED_GOOD))
    finishes = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"] is not None]
    if len(finishes) != 1:
        return Judged(f"lost: {len(finishes)} finishes")
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    rain = finishes[0]["rain"]  # the request's summary: in its own key on a last content chunk
    return Judged("completed", text, rain.get("summary", rain)["resubmissions"] > 0)


def retry_after(response: httpx.Response) -> Optional[float]:
    value = response.headers.get("retry-after")
    return float(value) if value is not None and value.isdigit() else None


# sending ---------------------------------------------------------------------------------------
def chat(content: str, max_tokens: int, rain: Optional[dict], stream: bool) -> dict:
    body = {"model": MODEL, "messages": [{"role": "user", "content": content}], "max_tokens": max_tokens,
            "rain": rain if rain is not None else {"enabled": False}}
    return {**body, "stream": True, "stream_options": {"include_usage": True}} if stream else body


def post_plain(client: httpx.Client, kind: str, body: bytes, good: bool, key: Optional[str], timeout=None) -> Outcome:
    response = client.post("/v1/chat/completions", content=body, headers={"content-type": "application/json"},
                           **({"timeout": timeout} if timeout else {}))
    judged = judge_plain(response.status_code, json_body(response.read()), good)
    return Outcome(kind, judged.result, judged.text, key, judged.resumed, retry_after(response))


def post_stream(client: httpx.Client, kind: str, body: dict, key: Optional[str], abandon_after: int = 0) -> Outcome:
    with client.stream("POST", "/v1/chat/completions", json=body) as response:
        if response.status_code != 200:
            judged = judge_plain(response.status_code, json_body(response.read()), True)
            return Outcome(kind, judged.result, retry_after=retry_after(response))
        payloads = []
        for line in response.iter_lines():
            if line.startswith("data: "):
                payloads.append(line[len("data: "):])
                if abandon_after and len(payloads) >= abandon_after and payloads[-1] != "[DONE]":
                    return Outcome(kind, "abandoned")  # leaving the block closes the connection
    judged = judge_stream(payloads)
    return Outcome(kind, judged.result, judged.text, key, judged.resumed)


def request(client: httpx.Client, kind: str, rng: random.Random) -> Outcome:
    prompt, max_tokens = rng.choice(PROMPTS), rng.choice((16, 32, 48))
    key = f"{prompt}|{max_tokens}"
    if kind in ("stream", "plain"):
        body = chat(prompt, max_tokens, None, kind == "stream")
        return post_stream(client, kind, body, key) if kind == "stream" else \
            post_plain(client, kind, json.dumps(body).encode(), True, key)
    if kind in ("stream_rain", "plain_rain"):
        body = chat(prompt, 16, TINY_RAIN, kind == "stream_rain")
        return post_stream(client, kind, body, None) if kind == "stream_rain" else \
            post_plain(client, kind, json.dumps(body).encode(), True, None)
    if kind == "abandon_stream":
        return post_stream(client, kind, chat(prompt, 64, None, True), key, abandon_after=rng.randint(1, 4))
    if kind == "abandon_plain":
        try:
            return post_plain(client, kind, json.dumps(chat(prompt, 32, TINY_RAIN, False)).encode(), True, None,
                              timeout=rng.uniform(0.1, 1.0))
        except httpx.ReadTimeout:
            return Outcome(kind, "abandoned")
    if kind == "oversize":
        return post_plain(client, kind, json.dumps(chat("lorem " * 12000, 16, None, False)).encode(), False, None)
    return post_plain(client, kind, rng.choice(MALFORMED), False, None)


def client_loop(base_url: str, deadline: float, seed: int, outcomes: list[Outcome]) -> None:
    rng = random.Random(seed)
    with httpx.Client(base_url=base_url, timeout=CLIENT_TIMEOUT_S) as client:
        while time.monotonic() < deadline:
            kind = rng.choice(KINDS)
            started = time.monotonic()
            try:
                outcome = request(client, kind, rng)
            except (httpx.TransportError, KeyError, TypeError) as exc:  # no answer, or not one of the API's shape
                outcome = Outcome(kind, f"lost: {type(exc).__name__}", detail=str(exc)[:300])
            outcome.started, outcome.ended = started, time.monotonic()
            outcomes.append(outcome)
            if outcome.retry_after is not None:  # as a client told to retry would
                time.sleep(max(0.0, min(outcome.retry_after, deadline - time.monotonic())))


# the processes -----------------------------------------------------------------------------------
def health(base_url: str) -> dict:
    return httpx.get(base_url + "/health", timeout=10).json()  # its 503 has the same body


def proc_stat(pid: int) -> Optional[list[str]]:
    """/proc/<pid>/stat's fields after the command name (state, ppid, pgrp, ...), or None once it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def processes() -> list[int]:
    return [int(entry.name) for entry in Path("/proc").iterdir() if entry.name.isdigit()]


def engine_cores(worker_pid: int) -> list[int]:
    """The vLLM engine-core processes a worker started, oldest first: the served model's, then the judge's."""
    found = []
    for pid in processes():
        stat = proc_stat(pid)
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if stat is not None and int(stat[1]) == worker_pid and b"EngineCore" in command:
            found.append((int(stat[19]), pid))  # field 22, the start time
    return [pid for _, pid in sorted(found)]


def rss_mb(pid: int) -> Optional[float]:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    kib = next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")), 0)
    return round(kib / 1024, 1)


def memory(base_url: str, api_pid: Optional[int]) -> Memory:
    """RSS now: the API process's, and each worker's alone and with its process group (a worker leads one)."""
    everything = [(pid, proc_stat(pid)) for pid in processes()]
    workers = []
    for worker in health(base_url)["workers"]:
        pid = worker["pid"]
        group = [p for p, stat in everything if stat is not None and int(stat[2]) == pid]
        workers.append({"index": worker["index"], "pid": pid, "rss_mb": rss_mb(pid),
                        "group_rss_mb": round(sum(rss_mb(p) or 0.0 for p in group), 1)})
    return Memory(rss_mb(api_pid) if api_pid else None, workers)


# the faults and the prober -----------------------------------------------------------------------
class Faults(threading.Thread):
    """Every `every_s` seconds the next fault of `kinds`, on an alive worker that is not stopped (a busy
    one first); a stopped worker is continued after `stop_s`, and at the end whatever is still stopped."""

    def __init__(self, base_url: str, kinds: tuple[str, ...], every_s: float, stop_s: float, started: float):
        super().__init__(name="faults", daemon=True)
        self.base_url, self.kinds, self.every_s, self.stop_s, self.started = base_url, kinds, every_s, stop_s, started
        self.done = threading.Event()
        self.log: list[Fault] = []
        self.stopped: set[int] = set()
        self._timers: list[threading.Timer] = []

    def run(self) -> None:
        """A kind's turn passes only once it has hit: with no worker alive, the next tick tries it again."""
        turns = itertools.cycle(self.kinds)
        kind = next(turns)
        while not self.done.wait(self.every_s):
            try:
                workers = [w for w in health(self.base_url)["workers"]
                           if w["alive"] and w["pid"] and w["pid"] not in self.stopped]
            except httpx.TransportError:
                continue  # the prober counts that
            if workers and self.inject(kind, max(workers, key=lambda w: w["running"])):
                kind = next(turns)

    def inject(self, kind: str, worker: dict) -> bool:
        pid = worker["pid"]
        if kind in ("kill_engine", "kill_judge_engine"):
            cores = engine_cores(pid)
            wanted = 0 if kind == "kill_engine" else 1
            if len(cores) <= wanted:
                return False
            pid = cores[wanted]
        try:
            os.kill(pid, signal.SIGSTOP if kind == "stop_worker" else signal.SIGKILL)
        except ProcessLookupError:
            return False
        self.log.append(Fault(round(time.monotonic() - self.started, 1), kind, worker["index"], pid))
        if kind == "stop_worker":
            self.stopped.add(pid)
            timer = threading.Timer(self.stop_s, self.resume, (pid,))
            self._timers.append(timer)
            timer.start()
        return True

    def resume(self, pid: int) -> None:
        if pid in self.stopped:
            self.stopped.discard(pid)
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass

    def finish(self) -> None:
        self.done.set()
        self.join()
        for timer in self._timers:
            timer.cancel()
        for pid in list(self.stopped):
            self.resume(pid)


def prober(base_url: str, stop: threading.Event, latencies_ms: list[float], failures: list[str], soak_started: float) -> None:
    with httpx.Client(timeout=10) as client:
        while not stop.wait(0.25):
            started = time.perf_counter()
            try:
                client.get(base_url + "/health")
            except httpx.TransportError as exc:
                failures.append(f"at {time.monotonic() - soak_started:.1f} s, after {time.perf_counter() - started:.1f} s: "
                                f"{type(exc).__name__}: {exc}")
                continue
            latencies_ms.append(1000 * (time.perf_counter() - started))


# the server --------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerFailed(RuntimeError):
    """A server that exited or never answered its health check: why, and the last lines of its log."""

    def __init__(self, why: str, log_path: Optional[Path] = None, tail: tuple[str, ...] = ()):
        self.why, self.log_path, self.tail = why, log_path, tail
        where = f" (log {log_path})" if log_path else ""
        super().__init__(f"{why}{where}" + (": " + " | ".join(tail) if tail else ""))

    @property
    def short(self) -> str:
        """Why, and the log's last line (where a failed argparse or a traceback says what went wrong)."""
        return f"{self.why}: {self.tail[-1]}" if self.tail else self.why


def launch(argv: list[str], base_url: str, log_path: Path, timeout_s: float = START_TIMEOUT_S,
           env: Optional[dict] = None) -> subprocess.Popen:
    """Start `argv` in its own process group (so that stop_server reaches its children too) with its
    output in `log_path`, and wait until `base_url`/health answers 200. On failure it is stopped and
    ServerFailed says why."""
    with open(log_path, "w") as log:
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline and process.poll() is None:
            try:
                if httpx.get(base_url + "/health", timeout=5).status_code == 200:
                    return process
            except httpx.TransportError:
                pass
            time.sleep(0.5)
    except BaseException:
        stop_server(process)
        raise
    why = f"exited with status {process.returncode}" if process.poll() is not None else f"not healthy after {timeout_s:.0f} s"
    stop_server(process)
    tail = [line.strip() for line in log_path.read_text(errors="replace").splitlines() if line.strip()][-5:]
    raise ServerFailed(why, log_path, tuple(tail))


def start_server(backend: str, workers: int, request_timeout: float, judge_model: Optional[str],
                 log_path: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    flags = ["--host", "127.0.0.1", "--port", str(port), "--backend", backend, "--workers", str(workers),
             "--threads", "1", "--max-running-per-worker", "2", "--max-queue", "16",
             "--request-timeout", f"{request_timeout:g}", "--default-mode", "vanilla"]
    if judge_model:
        flags += ["--judge-model", judge_model]
    base_url = f"http://127.0.0.1:{port}"
    try:
        return launch([sys.executable, "-m", "server.cli", *flags], base_url, log_path), base_url
    except ServerFailed as exc:
        raise SystemExit(f"rain-serve did not become healthy: {exc}")


def stop_server(process: subprocess.Popen) -> None:
    """SIGTERM the process group (rain-serve drains; its workers ignore the signal themselves), then SIGKILL."""
    def signal_group(sig):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            pass

    signal_group(signal.SIGTERM)
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    signal_group(signal.SIGKILL)  # what is left of its group: children that outlived it


def fault_kinds(backend: str, judge_model: Optional[str]) -> tuple[str, ...]:
    """The faults this server has: engine processes only on vLLM, a judge's engine only with a judge."""
    kinds = [k for k in FAULTS if backend == "vllm" or k not in ("kill_engine", "kill_judge_engine")]
    return tuple(k for k in kinds if judge_model or k != "kill_judge_engine")


# the report --------------------------------------------------------------------------------------
def greedy_repeats(outcomes: list[Outcome]) -> tuple[int, int]:
    """(compared, mismatched): completed vanilla answers that repeat an earlier (greedy) request, and those
    of them that differ from its first answer."""
    first: dict[str, str] = {}
    compared = wrong = 0
    for o in outcomes:
        if o.result == "completed" and o.key is not None:
            if o.key in first:
                compared += 1
                wrong += first[o.key] != o.text
            else:
                first[o.key] = o.text
    return compared, wrong


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else (values or [0.0])[0]


def across_a_fault(outcome: Outcome, faults: list[Fault], started: float) -> bool:
    return any(outcome.started < started + f.at_s < outcome.ended for f in faults)


def summarize(outcomes: list[Outcome], clients: int, seconds: float, faults: list[Fault], latencies_ms: list[float],
              health_failures: list[str], backend: Optional[str] = None, started: float = 0.0) -> Report:
    results = Counter(o.result for o in outcomes)
    by_kind: dict[str, dict[str, int]] = {}
    for o in outcomes:
        by_kind.setdefault(o.kind, Counter())[o.result] += 1
    lost = {r: n for r, n in results.items() if r.startswith("lost")}
    errors = [o for o in outcomes if o.result.startswith("error")]
    ours = [o for o in errors if o.kind in GOOD_KINDS]
    compared, mismatched = greedy_repeats(outcomes)
    completed = [o for o in outcomes if o.result == "completed"]
    return Report(
        backend, clients, round(seconds, 1), dict(Counter(f.kind for f in faults)), len(outcomes), len(completed),
        resumed=sum(o.resumed for o in completed),
        completed_across_fault=sum(across_a_fault(o, faults, started) for o in completed),
        abandoned=results["abandoned"], errors_client=len(errors) - len(ours), errors_ours=len(ours),
        errors_ours_past_timeout=sum(o.result.startswith("error 504") for o in ours),
        failed={r: n for r, n in sorted(results.items()) if r.startswith("error")}, lost=lost,
        lost_total=sum(lost.values()), mismatched=mismatched, greedy_repeats=compared,
        health_p50_ms=round(percentile(latencies_ms, 50), 1), health_p99_ms=round(percentile(latencies_ms, 99), 1),
        health_probes=len(latencies_ms), health_failures=len(health_failures),
        retry_after_s=sorted(o.retry_after for o in outcomes if o.retry_after is not None),
        lost_log=[{"kind": o.kind, "at_s": round(o.started - started, 1), "took_s": round(o.ended - o.started, 1),
                   "why": o.detail or o.result} for o in outcomes if o.lost],
        health_failure_log=list(health_failures),
        fault_log=list(faults), by_kind={k: dict(v) for k, v in sorted(by_kind.items())},
    )


def memory_lines(report: Report) -> list[str]:
    start, end = report.memory_start, report.memory_end
    if start is None or end is None:
        return []
    lines = [f"RSS, MiB, start -> end: API process {start.api_mb} -> {end.api_mb}"]
    for before, after in zip(start.workers, end.workers):
        lines.append(f"worker {before['index']}: pid {before['pid']} {before['rss_mb']} (group {before['group_rss_mb']})"
                     f" -> pid {after['pid']} {after['rss_mb']} (group {after['group_rss_mb']})")
    return lines


def table(report: Report) -> str:
    lines = ["| kind | sent | completed | abandoned | errors | lost |", "|---|---|---|---|---|---|"]
    for kind, results in report.by_kind.items():
        errors = ", ".join(f"{r[len('error '):]} x{n}" for r, n in results.items() if r.startswith("error"))
        lost = sum(n for r, n in results.items() if r.startswith("lost"))
        lines.append(f"| {kind} | {sum(results.values())} | {results.get('completed', 0)} | "
                     f"{results.get('abandoned', 0)} | {errors or '-'} | {lost} |")
    lines.append(f"| **all** | {report.sent} | {report.completed} | {report.abandoned} | "
                 f"{report.errors_client + report.errors_ours} | **{report.lost_total}** |")
    faults = ", ".join(f"{kind} x{n}" for kind, n in report.faults.items()) or "none"
    lines.append(f"\n{report.backend or 'a running server'}, {report.clients} clients, {report.seconds} s; "
                 f"faults: {faults}")
    lines.append(f"errors: {report.errors_client} the client's (bad requests), {report.errors_ours} ours "
                 f"({report.errors_ours_past_timeout} past --request-timeout); {report.resumed} answers completed "
                 f"after their worker died under them, {report.completed_across_fault} in flight across a fault")
    lines.append(f"/health p50 {report.health_p50_ms} ms, p99 {report.health_p99_ms} ms over {report.health_probes} "
                 f"probes ({report.health_failures} unanswered); {report.mismatched} of {report.greedy_repeats} "
                 f"repeated greedy answers differed from the first")
    lines += [f"lost: {entry}" for entry in report.lost_log]
    lines += [f"unanswered /health probe: {entry}" for entry in report.health_failure_log]
    return "\n".join(lines + memory_lines(report))


def wait_for_every_worker(base_url: str, timeout_s: float = START_TIMEOUT_S) -> None:
    """/health answers 200 once one worker is ready; the soak starts with all of them."""
    deadline = time.monotonic() + timeout_s
    while not all(w["alive"] for w in health(base_url)["workers"]):
        if time.monotonic() > deadline:
            raise SystemExit(f"not every worker was ready after {timeout_s:.0f} s")
        time.sleep(1)


def soak(base_url: str, clients: int, minutes: float, fault_every_s: float, kinds: tuple[str, ...], stop_s: float,
         seed: int, backend: Optional[str], api_pid: Optional[int]) -> Report:
    wait_for_every_worker(base_url)
    memory_start = memory(base_url, api_pid)
    stop, latencies, failures, outcomes = threading.Event(), [], [], []
    started = time.monotonic()
    deadline = started + 60 * minutes
    probe = threading.Thread(target=prober, args=(base_url, stop, latencies, failures, started), daemon=True)
    faults = Faults(base_url, kinds, fault_every_s, stop_s, started)
    workers = [threading.Thread(target=client_loop, args=(base_url, deadline, seed + i, outcomes)) for i in range(clients)]
    for thread in [probe, *([faults] if fault_every_s > 0 and kinds else []), *workers]:
        thread.start()
    for thread in workers:
        thread.join()
    if faults.is_alive():
        faults.finish()
    stop.set()
    probe.join()
    report = summarize(outcomes, clients, time.monotonic() - started, faults.log, latencies, failures, backend, started)
    report.memory_start, report.memory_end = memory_start, memory(base_url, api_pid)
    return report


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.splitlines()[0])
    p.add_argument("--base-url", default=None, help="a running server on this machine; default: start one")
    p.add_argument("--backend", choices=["vllm", "transformers"], default=ServerConfig.backend,
                   help="of the server it starts (default: the server's own default)")
    p.add_argument("--judge-model", default=None, help="of the server it starts: adds the judge-engine fault on vllm")
    p.add_argument("--workers", type=int, default=2, help="of the server it starts")
    p.add_argument("--request-timeout", type=float, default=60.0,
                   help="the server's --request-timeout (of the one it starts); a stopped worker stays stopped longer")
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--fault-every", type=float, default=30.0, help="seconds between faults; 0: none")
    p.add_argument("--faults", default=None,
                   help=f"comma-separated kinds to rotate through (default: those the server has of {','.join(FAULTS)})")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="write the report as JSON here")
    args = p.parse_args(argv)
    kinds = tuple(args.faults.split(",")) if args.faults else fault_kinds(args.backend, args.judge_model)

    process = None
    base_url = args.base_url
    if base_url is None:
        # one log per run: a second soak must not overwrite the log that explains the first one's report
        log_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"rain-soak-server-{os.getpid()}.log"
        print(f"server log: {log_path}", file=sys.stderr, flush=True)
        process, base_url = start_server(args.backend, args.workers, args.request_timeout, args.judge_model, log_path)
    try:
        report = soak(base_url.rstrip("/"), args.clients, args.minutes, args.fault_every, kinds,
                      args.request_timeout + STOP_BEYOND_TIMEOUT_S, args.seed,
                      args.backend if process is not None else None, process and process.pid)
    finally:
        if process is not None:
            stop_server(process)
    print(json.dumps(asdict(report), indent=1))
    print(table(report))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(asdict(report), indent=1))


if __name__ == "__main__":
    main()
