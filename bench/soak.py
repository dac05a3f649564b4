"""Soak: K clients for M minutes against one server while its workers are killed, counting lost requests.

    python -m bench.soak [--clients 4] [--minutes 3] [--kill-every 30] [--workers 2] [--base-url URL] [--out FILE]

Without --base-url it starts `rain-serve` on a free loopback port (the embedded SmolLM2, vanilla by
default) and stops it afterwards. Each client sends, at random: streamed and non-streamed requests,
vanilla and RAIN with tiny budgets, streams it abandons after a few chunks or non-streamed requests it
gives up on after a fraction of a second, prompts too long for the context, and malformed bodies. A
killer SIGKILLs a worker (its pid from /health, so the server must be on this machine) every
--kill-every seconds; a prober times /health all along.

A request is *lost* when it got neither a complete answer (exactly one finish, then [DONE]) nor an
error it was entitled to: 400 for a bad request; 429, 503 or 504 in the OpenAI error shape for a good
one. A transport error, a 500, a cut stream, a second finish are losses. The target is 0. Vanilla
answers are greedy, so every answer to the same vanilla request must also be the same text
(`mismatched` counts those that are not: text repeated or changed across a resume).
"""
from __future__ import annotations

import argparse
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

MODEL = "smollm2"
TINY_RAIN = {"max_iters": 1, "min_iters": 1}
PROMPTS = ("Write a short story about a lighthouse keeper.", "Explain how a bicycle gear works.",
           "List five rivers of Europe and one fact about each.")
ENTITLED_GOOD = {429, 503, 504}  # refused while busy or restarting, timed out, or out of attempts
IN_BAND_STATUS = {"rate_limit_error": 429, "service_unavailable_error": 503, "timeout_error": 504}
KINDS = ("stream", "plain", "stream_rain", "plain_rain", "abandon_stream", "abandon_plain", "oversize", "malformed")
MALFORMED = (b'{"model": "smollm2", "messages": [', b'{"model": "smollm2", "messages": "hi"}',
             b'{"model": "smollm2", "messages": [{"role": "user", "content": "hi"}], "max_tokens": -3}',
             b'{"model": "smollm2", "messages": [{"role": "user", "content": "hi"}], "best_of": 3}')
CLIENT_TIMEOUT_S = 180
START_TIMEOUT_S = 300


@dataclass
class Outcome:
    kind: str
    result: str  # "completed", "abandoned", "error <status> <code>", or "lost: <why>"
    text: Optional[str] = None  # a completed vanilla answer's text, to compare across repeats
    key: Optional[str] = None  # what identifies the same vanilla request
    resumed: bool = False  # completed after its worker died under it

    @property
    def lost(self) -> bool:
        return self.result.startswith("lost")


@dataclass
class Report:
    clients: int
    seconds: float
    kills: int
    sent: int
    completed: int
    abandoned: int
    resumed: int  # completed answers whose worker died under them
    failed: dict[str, int]
    lost: dict[str, int]
    lost_total: int
    mismatched: int
    health_p50_ms: float
    health_p99_ms: float
    health_probes: int
    health_failures: int  # probes that got no answer at all
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
        return Judged(error_result(status, body, ENTITLED_GOOD if good else {400}))
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


# sending ---------------------------------------------------------------------------------------
def chat(content: str, max_tokens: int, rain: Optional[dict], stream: bool) -> dict:
    body = {"model": MODEL, "messages": [{"role": "user", "content": content}], "max_tokens": max_tokens,
            "rain": rain if rain is not None else {"enabled": False}}
    return {**body, "stream": True, "stream_options": {"include_usage": True}} if stream else body


def post_plain(client: httpx.Client, kind: str, body: bytes, good: bool, key: Optional[str], timeout=None) -> Outcome:
    response = client.post("/v1/chat/completions", content=body, headers={"content-type": "application/json"},
                           **({"timeout": timeout} if timeout else {}))
    judged = judge_plain(response.status_code, json_body(response.read()), good)
    return Outcome(kind, judged.result, judged.text, key, judged.resumed)


def post_stream(client: httpx.Client, kind: str, body: dict, key: Optional[str], abandon_after: int = 0) -> Outcome:
    with client.stream("POST", "/v1/chat/completions", json=body) as response:
        if response.status_code != 200:
            return Outcome(kind, judge_plain(response.status_code, json_body(response.read()), True).result)
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
            try:
                outcomes.append(request(client, kind, rng))
            except (httpx.TransportError, KeyError, TypeError) as exc:  # no answer, or not one of the API's shape
                outcomes.append(Outcome(kind, f"lost: {type(exc).__name__}"))
            if outcomes[-1].result.startswith("error 429") or outcomes[-1].result.startswith("error 503 no_worker"):
                time.sleep(0.5)  # as a client told to retry would


# the killer and the prober -----------------------------------------------------------------------
def health(base_url: str) -> dict:
    return httpx.get(base_url + "/health", timeout=10).json()  # its 503 has the same body


def killer(base_url: str, every_s: float, stop: threading.Event, kills: list[int]) -> None:
    """SIGKILL a worker every `every_s` seconds, a busy one when there is one."""
    while not stop.wait(every_s):
        try:
            workers = [w for w in health(base_url)["workers"] if w["alive"] and w["pid"]]
        except httpx.TransportError:
            continue  # the prober counts that
        if workers:
            victim = max(workers, key=lambda w: w["running"])
            try:
                os.kill(victim["pid"], signal.SIGKILL)
                kills.append(victim["pid"])
            except ProcessLookupError:
                pass


def prober(base_url: str, stop: threading.Event, latencies_ms: list[float], failures: list[str]) -> None:
    with httpx.Client(timeout=10) as client:
        while not stop.wait(0.25):
            started = time.perf_counter()
            try:
                client.get(base_url + "/health")
            except httpx.TransportError as exc:
                failures.append(type(exc).__name__)
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


def start_server(workers: int, log_path: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    # the backend whose worker restarts and queue limits the README's soak figures describe
    flags = ["--host", "127.0.0.1", "--port", str(port), "--backend", "transformers", "--workers", str(workers), "--threads", "1",
             "--max-running-per-worker", "2", "--max-queue", "16", "--request-timeout", "120"]
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


# the report --------------------------------------------------------------------------------------
def mismatches(outcomes: list[Outcome]) -> int:
    """Completed vanilla answers that differ from the first answer to the same (greedy) request."""
    first: dict[str, str] = {}
    wrong = 0
    for o in outcomes:
        if o.result == "completed" and o.key is not None:
            wrong += first.setdefault(o.key, o.text) != o.text
    return wrong


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else (values or [0.0])[0]


def summarize(outcomes: list[Outcome], clients: int, seconds: float, kills: int, latencies_ms: list[float],
              health_failures: int) -> Report:
    results = Counter(o.result for o in outcomes)
    by_kind: dict[str, dict[str, int]] = {}
    for o in outcomes:
        by_kind.setdefault(o.kind, Counter())[o.result] += 1
    lost = {r: n for r, n in results.items() if r.startswith("lost")}
    return Report(
        clients, round(seconds, 1), kills, len(outcomes), results["completed"], results["abandoned"],
        resumed=sum(o.resumed for o in outcomes),
        failed={r: n for r, n in sorted(results.items()) if r.startswith("error")}, lost=lost,
        lost_total=sum(lost.values()), mismatched=mismatches(outcomes),
        health_p50_ms=round(percentile(latencies_ms, 50), 1), health_p99_ms=round(percentile(latencies_ms, 99), 1),
        health_probes=len(latencies_ms), health_failures=health_failures, by_kind={k: dict(v) for k, v in sorted(by_kind.items())},
    )


def table(report: Report) -> str:
    lines = ["| kind | sent | completed | abandoned | errors (entitled) | lost |", "|---|---|---|---|---|---|"]
    for kind, results in report.by_kind.items():
        errors = ", ".join(f"{r[len('error '):]} x{n}" for r, n in results.items() if r.startswith("error"))
        lost = sum(n for r, n in results.items() if r.startswith("lost"))
        lines.append(f"| {kind} | {sum(results.values())} | {results.get('completed', 0)} | "
                     f"{results.get('abandoned', 0)} | {errors or '-'} | {lost} |")
    lines.append(f"| **all** | {report.sent} | {report.completed} | {report.abandoned} | "
                 f"{sum(report.failed.values())} | **{report.lost_total}** |")
    lines.append(f"\n{report.kills} workers killed in {report.seconds} s, {report.resumed} answers completed "
                 f"after their worker died; /health p50 {report.health_p50_ms} ms, "
                 f"p99 {report.health_p99_ms} ms over {report.health_probes} probes ({report.health_failures} unanswered); "
                 f"{report.mismatched} vanilla answers differed from an earlier answer to the same request")
    return "\n".join(lines)


def soak(base_url: str, clients: int, minutes: float, kill_every_s: float, seed: int) -> Report:
    stop, kills, latencies, failures, outcomes = threading.Event(), [], [], [], []
    started = time.monotonic()
    deadline = started + 60 * minutes
    helpers = [threading.Thread(target=prober, args=(base_url, stop, latencies, failures), daemon=True)]
    if kill_every_s > 0:
        helpers.append(threading.Thread(target=killer, args=(base_url, kill_every_s, stop, kills), daemon=True))
    workers = [threading.Thread(target=client_loop, args=(base_url, deadline, seed + i, outcomes)) for i in range(clients)]
    for thread in helpers + workers:
        thread.start()
    for thread in workers:
        thread.join()
    stop.set()
    for thread in helpers:
        thread.join()
    return summarize(outcomes, clients, time.monotonic() - started, len(kills), latencies, len(failures))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.splitlines()[0])
    p.add_argument("--base-url", default=None, help="a running server on this machine; default: start one")
    p.add_argument("--workers", type=int, default=2, help="of the server it starts")
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--minutes", type=float, default=3.0)
    p.add_argument("--kill-every", type=float, default=30.0, help="seconds between worker kills; 0: none")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="write the report as JSON here")
    args = p.parse_args(argv)

    process = None
    base_url = args.base_url
    if base_url is None:
        process, base_url = start_server(args.workers, Path(os.environ.get("TMPDIR", "/tmp")) / "rain-soak-server.log")
    try:
        report = soak(base_url.rstrip("/"), args.clients, args.minutes, args.kill_every, args.seed)
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
