"""The OpenAI-API side: send each item in each mode, with a progress bar, into a resumable Store.

RAIN is requested only through `extra_body={"rain": {...}}`; `--plain` sends no `rain` field at all,
for endpoints that are not rain-serve (vanilla only).
"""
from __future__ import annotations

import json
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

from tqdm import tqdm

from .data import Item
from .store import Store

MODES = ("vanilla", "rain")


@dataclass(frozen=True)
class ClientConfig:
    base_url: str = "http://127.0.0.1:8000/v1"
    model: Optional[str] = None  # None: the endpoint's first listed model
    api_key: str = "EMPTY"
    max_tokens: int = 48
    temperature: Optional[float] = None  # None: the endpoint's default (rain-serve: greedy vanilla)
    seed: int = 0
    plain: bool = False  # foreign endpoint: no `rain` field
    rain: dict[str, Any] = field(default_factory=dict)  # preset, max_iters, min_iters, time_budget_s
    timeout_s: float = 1800.0
    retries: int = 2
    busy_wait_s: float = 900.0  # how long 503/429 (server starting, queue full) are waited out


def modes_for(mode: str, plain: bool) -> list[str]:
    modes = list(MODES) if mode == "both" else [mode]
    if plain and "rain" in modes:
        raise SystemExit("--plain (a foreign endpoint) evaluates vanilla only: use --mode vanilla")
    return modes


class ChatClient:
    def __init__(self, config: ClientConfig):
        from openai import OpenAI

        self.config = config
        self.api = OpenAI(base_url=config.base_url, api_key=config.api_key, timeout=config.timeout_s, max_retries=0)
        self.model = config.model or self.api.models.list().data[0].id

    def extra_body(self, mode: str) -> Optional[dict]:
        if self.config.plain:
            return None
        if mode == "rain":
            return {"rain": {"enabled": True, **self.config.rain}}
        return {"rain": {"enabled": False}}

    def complete(self, messages: list[dict], mode: str) -> dict:
        """One chat completion -> {"reply", "finish_reason", "latency_s", "usage", "rain"}."""
        c = self.config
        kwargs: dict[str, Any] = dict(model=self.model, messages=messages, max_tokens=c.max_tokens, seed=c.seed)
        if c.temperature is not None:
            kwargs["temperature"] = c.temperature
        extra = self.extra_body(mode)
        if extra:
            kwargs["extra_body"] = extra
        attempt, waited = 0, 0.0
        while True:
            started = time.perf_counter()
            try:
                resp = self.api.chat.completions.create(**kwargs)
                break
            except Exception as exc:
                busy = getattr(exc, "status_code", None) in (429, 503)  # starting up or queue full: wait
                if busy and waited < c.busy_wait_s:
                    time.sleep(5.0)
                    waited += 5.0
                    continue
                if busy or attempt >= c.retries:
                    raise
                attempt += 1
                time.sleep(2 ** attempt)
        latency = time.perf_counter() - started
        body = resp.model_dump()
        rain = body.get("rain")
        if mode == "rain" and not (rain and rain.get("enabled", True)):
            raise RuntimeError("the endpoint answered without a `rain` object: it does not run RAIN; use --plain --mode vanilla")
        choice = body["choices"][0]
        return {"reply": choice["message"]["content"] or "", "finish_reason": choice.get("finish_reason"),
                "latency_s": latency, "usage": body.get("usage"), "rain": rain}


def run_key(mode: str, rain: dict[str, Any]) -> str:
    """Records of RAIN runs are keyed by their search settings, so one results file keeps the vanilla
    answers while RAIN settings change, and a summary only counts the records of the settings asked."""
    return f"rain{json.dumps(rain, sort_keys=True, separators=(',', ':'))}" if mode == "rain" else mode


def run_items(client: ChatClient, items: Sequence[Item], modes: Sequence[str], store: Store, concurrency: int = 1,
              send: bool = True) -> list[dict]:
    """Send every (mode, item) not yet in the store (none when not `send`); return the records of all of them.
    Failures are reported and left out of the store, so a rerun retries them."""
    run = {m: run_key(m, client.config.rain) for m in modes}

    def key(mode: str, item_id: str) -> str:
        return f"{run[mode]}/{item_id}"

    todo = [(m, it) for it in items for m in modes if send and key(m, it.id) not in store]
    errors: list[str] = []
    with ThreadPoolExecutor(max(1, concurrency)) as pool, tqdm(total=len(items) * len(modes), initial=len(items) * len(modes) - len(todo),
                                                                 desc="requests", unit="req", dynamic_ncols=True) as bar:
        pending = {pool.submit(client.complete, it.messages, m): (m, it) for m, it in todo}
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in done:
                m, it = pending.pop(fut)
                bar.update(1)
                try:
                    result = fut.result()
                except Exception as exc:  # noqa: BLE001 - reported, retried on the next run
                    errors.append(f"{key(m, it.id)}: {exc}")
                    bar.set_postfix(errors=len(errors))
                    continue
                store.add({"key": key(m, it.id), "id": it.id, "mode": m, "meta": it.meta, "prompt": it.prompt, **result})
    for e in errors[:10]:
        tqdm.write(f"error {e}")
    if errors:
        tqdm.write(f"{len(errors)} requests failed; rerun the same command to retry them")
    return store.select(key(m, it.id) for it in items for m in modes)
