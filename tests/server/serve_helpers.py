"""Helpers for the server tests: request bodies, raw SSE reading, metric scraping."""
from __future__ import annotations

import json

import httpx

MODEL = "SmolLM2-135M-Instruct"
VANILLA = {"rain": {"enabled": False}}
TINY_RAIN = {"rain": {"max_iters": 2, "min_iters": 2}}  # two iterations per commit keep RAIN tests short


def prompt_tokens(tokenizer, messages) -> int:
    """What the server should report as usage.prompt_tokens: the ids the engine feeds."""
    from rain_core.engine import prompt_ids

    return len(prompt_ids(tokenizer, messages))


def chat_body(content: str = "Name three colours.", **fields) -> dict:
    return {"model": "smollm2", "messages": [{"role": "user", "content": content}], **fields}


def sse_data(response: httpx.Response) -> list[str]:
    """The `data:` payloads of an SSE response, in order; comments (keep-alives) are dropped."""
    return [line[len("data: "):] for line in response.iter_lines() if line.startswith("data: ")]


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
