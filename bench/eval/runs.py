"""What the HTTP suites share around the records: grouping by mode, pairing, cost statistics."""
from __future__ import annotations

import json
import math
import re
import statistics
from argparse import Namespace
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence

from rain_core.config import REFUSAL_TEXT

from .client import ChatClient, ClientConfig, modes_for, run_items
from .data import Item
from .metrics import mean, rate
from .store import Store

RESULTS = Path("bench/results")


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", text.split("/")[-1]).strip("-").lower()


def rain_settings(args: Namespace) -> dict[str, Any]:
    given = {"preset": args.preset, "max_iters": args.max_iters, "min_iters": args.min_iters,
             "time_budget_s": args.time_budget_s, "best_of": args.best_of}
    # the defaults are left out, so that records of RAIN runs made before these options keep their keys
    if args.strategy != "rain":
        given["strategy"] = args.strategy
    if args.judge != "self":
        given["judge"] = args.judge
    for option in getattr(args, "rain_option", []):
        name, _, value = option.partition("=")
        try:
            given[name] = json.loads(value)
        except json.JSONDecodeError:
            given[name] = value
    return {k: v for k, v in given.items() if v is not None}


def mode_label(mode: str, rain: dict[str, Any]) -> str:
    """What a table or a plot calls a mode: vanilla, or the strategy of the `rain` mode and its judge."""
    if mode != "rain":
        return mode
    name = rain.get("strategy", "rain")
    if name == "best_of_n":
        name = f"best_of_{rain.get('best_of', 'n')}"
    return name + (" (served judge)" if rain.get("judge") == "served" else "")


def generate(args: Namespace, name: str, items: Sequence[Item], meta: dict[str, Any]) -> tuple[list[dict], dict[str, Any]]:
    """Ask the endpoint for every item in every mode (resuming `args.out`); return the records and the
    run's settings for the summary. Sets `args.out` when it was not given."""
    rain = rain_settings(args)
    client = ChatClient(ClientConfig(base_url=args.base_url, model=args.model, api_key=args.api_key,
                                     max_tokens=args.max_tokens, temperature=args.temperature, seed=args.seed,
                                     plain=args.plain, rain=rain))
    modes = modes_for(args.mode, args.plain)
    args.out = Path(args.out) if args.out else RESULTS / f"{name}-{slug(client.model)}.jsonl"
    settings = {"suite": name, "model": client.model, "max_tokens": args.max_tokens, "temperature": args.temperature,
                "seed": args.seed, "plain": args.plain, **meta}
    store = Store(args.out, settings)
    records = run_items(client, items, modes, store, args.concurrency, send=not args.no_send)
    endpoint = None if args.no_send else args.base_url  # a --no-send summary asked no endpoint; do not name one
    ctx = {"settings": {**settings, "rain": rain, "base_url": endpoint, "modes": modes, "limit": args.limit},
           "command": args.command, "results": str(args.out), "complete": _complete(records, items, modes)}
    return records, ctx


def _complete(records: list[dict], items: Sequence[Item], modes: Sequence[str]) -> bool:
    """Whether every (item, mode) has its record (a --no-send summary of a run cut short has not)."""
    return len(records) == len(items) * len(modes)


def by_mode(records: Iterable[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in records:
        out.setdefault(r["mode"], []).append(r)
    return out


def paired(groups: dict[str, list[dict]]) -> dict[str, list[dict]]:
    """Keep only items answered in every mode, so modes are compared on the same prompts."""
    common = set.intersection(*(set(r["id"] for r in rs) for rs in groups.values())) if groups else set()
    return {m: sorted((r for r in rs if r["id"] in common), key=lambda r: r["id"]) for m, rs in groups.items()}


def _median(xs: list[float]) -> Optional[float]:
    return statistics.median(xs) if xs else None


def commit_iterations(rain: dict) -> list[float]:
    """Search iterations spent on each committed token set, from a response's `rain` object
    (rain-serve's `commit_stats`; else the request's average)."""
    rows = rain.get("commit_stats")
    if isinstance(rows, list):
        return [float(c["iterations"]) for c in rows if isinstance(c, dict) and c.get("iterations") is not None]
    if rain.get("commits") and rain.get("iterations") is not None:
        return [rain["iterations"] / rain["commits"]]
    return []


def overhead_ratio(rain: dict) -> Optional[float]:
    """rain-serve's RAIN compute time over its estimate of vanilla time for the same answer."""
    value = rain.get("overhead_ratio")
    return None if value is None else float(value)


def cost(records: list[dict]) -> dict[str, Any]:
    """Latency and, for RAIN records, the server's search statistics."""
    latency = [r["latency_s"] for r in records]
    tokens = [r["usage"]["completion_tokens"] for r in records if r.get("usage")]
    out: dict[str, Any] = {"latency_s_mean": mean(latency), "latency_s_median": _median(latency),
                           "completion_tokens_mean": mean(tokens)}
    rains = [r["rain"] for r in records if r["mode"] == "rain" and r.get("rain")]
    if rains:
        ratios = [x for x in map(overhead_ratio, rains) if x is not None]
        ipc = [i for x in rains for i in commit_iterations(x)]
        out.update(overhead_ratio_mean=mean(ratios), overhead_ratio_median=_median(ratios),
                   iterations_per_commit_mean=mean(ipc),
                   self_evaluations_mean=mean([x.get("self_evaluations") for x in rains if x.get("self_evaluations") is not None]))
    return out


def rates_by_mode(groups: dict[str, list[dict]], flag: Callable[[dict], bool],
                  where: Callable[[dict], bool] = lambda r: True) -> dict[str, dict]:
    return {m: rate([flag(r) for r in rs if where(r)]) for m, rs in groups.items()}


def latency_ratio(groups: dict[str, list[dict]]) -> Optional[float]:
    """Client-measured mean RAIN latency over mean vanilla latency on the same prompts."""
    if "rain" not in groups or "vanilla" not in groups:
        return None
    v, r = mean([x["latency_s"] for x in groups["vanilla"]]), mean([x["latency_s"] for x in groups["rain"]])
    return r / v if v and r else None


SWEEP_STEP = 0.01  # the spacing of the thresholds a self_check run is read at


def self_check_sweep(groups: dict[str, list[dict]],
                     rates: dict[str, tuple[Callable[[dict], bool], Callable[[dict], bool]]],
                     step: float = SWEEP_STEP) -> list[dict]:
    """A self_check run read at other thresholds: an answer is replaced when its judge value is at or
    below the threshold, and a kept answer is the vanilla one (both are greedy decodings of the same
    prompt; a run's kept answers equal them), so each threshold's outcome follows from the values
    judged once. `rates`: name -> (flag, where) of each rate to report. Empty unless the run's
    `rain` mode is self_check and every answer it kept is vanilla's (a sampled run's are not)."""
    judged = [(v, r) for v, r in zip(groups.get("vanilla", []), groups.get("rain", []))
              if (r.get("rain") or {}).get("strategy") == "self_check" and r["rain"].get("judge_values")]
    if not judged or any(r["reply"] != v["reply"] for v, r in judged if not r["rain"].get("replaced")):
        return []
    refusal = next((r["reply"] for _, r in judged if r["rain"].get("replaced")), REFUSAL_TEXT)
    values = [r["rain"]["judge_values"][0] for _, r in judged]
    rows = []
    for k in range(math.floor(min(values) / step), math.ceil(max(values) / step) + 1):
        threshold = round(k * step, 4)
        answers = [v if x > threshold else {**v, "reply": refusal} for (v, _), x in zip(judged, values)]
        row = {"threshold": threshold, "replaced": sum(x <= threshold for x in values) / len(values)}
        for name, (flag, where) in rates.items():
            row[name] = rate([flag(a) for a in answers if where(a)])["rate"]
        rows.append(row)
    return rows
