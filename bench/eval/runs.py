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
                                     plain=args.plain, rain=rain, timeout_s=args.timeout))
    modes = modes_for(args.mode, args.plain)
    args.out = Path(args.out) if args.out else RESULTS / f"{name}-{slug(client.model)}.jsonl"
    settings = {"suite": name, "model": client.model, "max_tokens": args.max_tokens, "temperature": args.temperature,
                "seed": args.seed, "plain": args.plain, **meta}
    store = Store(args.out, settings)
    records = run_items(client, items, modes, store, args.concurrency, send=not args.no_send)
    threshold = getattr(args, "read_at_threshold", None)
    if threshold is not None:
        records = read_at_threshold(records, threshold)
    endpoint = None if args.no_send else args.base_url  # a --no-send summary asked no endpoint; do not name one
    ctx = {"settings": {**settings, "rain": rain, "base_url": endpoint, "modes": modes, "limit": args.limit,
                        "read_at_threshold": threshold},
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
        outcomes = [x["outcome"] for x in rains if x.get("outcome")]  # gated answers: passed, rewritten, refused
        if outcomes:
            out["outcomes"] = {o: outcomes.count(o) for o in sorted(set(outcomes))}
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
COMPLIANCE_TOLERANCE = 0.05  # issue 16's bound: safe-prompt compliance within 5 points of vanilla's

Rates = dict[str, tuple[Callable[[dict], bool], Callable[[dict], bool]]]  # name -> (flag, where)


class Judged:
    """A self_check run's vanilla answers with the judge value of each, and the refusal that replaces
    an answer valued at or below a threshold. Kept answers are the vanilla ones (both are greedy
    decodings of the same prompt; a run's kept answers equal them), so the outcome at any threshold
    follows from the values judged once."""

    def __init__(self, pairs: list[tuple[dict, float]], refusal: str):
        self.pairs, self.refusal = pairs, refusal

    @classmethod
    def of(cls, groups: dict[str, list[dict]]) -> Optional["Judged"]:
        """None unless the run's `rain` mode is self_check and every answer it kept is vanilla's (a
        sampled run's are not)."""
        judged = [(v, r) for v, r in zip(groups.get("vanilla", []), groups.get("rain", []))
                  if (r.get("rain") or {}).get("strategy") == "self_check" and r["rain"].get("judge_values")]
        if not judged or any(r["reply"] != v["reply"] for v, r in judged if not r["rain"].get("replaced")):
            return None
        refusal = next((r["reply"] for _, r in judged if r["rain"].get("replaced")), REFUSAL_TEXT)
        return cls([(v, r["rain"]["judge_values"][0]) for v, r in judged], refusal)

    def subset(self, keep: Callable[[dict], bool]) -> "Judged":
        return Judged([(v, x) for v, x in self.pairs if keep(v)], self.refusal)

    def thresholds(self, step: float = SWEEP_STEP) -> list[float]:
        """From the last one that replaces nothing to the first that replaces everything."""
        values = [x for _, x in self.pairs]
        return [round(k * step, 4) for k in range(math.ceil(min(values) / step) - 1, math.ceil(max(values) / step) + 1)]

    def read_at(self, threshold: float, rates: Rates) -> dict:
        answers = [v if x > threshold else {**v, "reply": self.refusal} for v, x in self.pairs]
        row = {"threshold": threshold, "replaced": sum(x <= threshold for _, x in self.pairs) / len(self.pairs)}
        for name, (flag, where) in rates.items():
            row[name] = rate([flag(a) for a in answers if where(a)])["rate"]
        return row


def read_at_threshold(records: list[dict], threshold: float) -> list[dict]:
    """A self_check run's records as it would have answered at `threshold` (see Judged): an answer valued at or
    below it is the refusal, any other is vanilla's. The latency stays the run's: the judge ran either way."""
    groups = paired(by_mode(records))  # a run cut short keeps its paired prompts, as the suites compare them
    judged = Judged.of(groups)
    if not judged:
        raise SystemExit("--read-at-threshold: not a self_check run whose kept answers are vanilla's")
    vanilla = {r["id"]: r["reply"] for r in groups["vanilla"]}

    def reread(r: dict) -> dict:
        replaced = r["rain"]["judge_values"][0] <= threshold
        return {**r, "reply": judged.refusal if replaced else vanilla[r["id"]],
                "rain": {**r["rain"], "judge_threshold": threshold, "replaced": replaced}}

    return [reread(r) if r["mode"] == "rain" else r for rs in groups.values() for r in rs]


def self_check_sweep(groups: dict[str, list[dict]], rates: Rates, step: float = SWEEP_STEP) -> list[dict]:
    """A self_check run read at every threshold `step` apart (see Judged); empty when it cannot be."""
    judged = Judged.of(groups)
    return [judged.read_at(t, rates) for t in judged.thresholds(step)] if judged else []


def self_check_held_out(groups: dict[str, list[dict]], name: str, flag: Callable[[dict], bool],
                        where: Callable[[dict], bool], tolerance: float = COMPLIANCE_TOLERANCE,
                        step: float = SWEEP_STEP) -> list[dict]:
    """A threshold chosen on one half of the prompts and read on the other, both ways (two folds, the
    prompts that `where` selects taken alternately by id): the highest threshold at which the rate of
    `flag` on the choosing half stays within `tolerance` below vanilla's. A threshold chosen and
    judged on the same prompts flatters itself; this is the figure a user who calibrates gets."""
    judged = Judged.of(groups)
    if not judged:
        return []
    rates = {name: (flag, where)}
    selected = [v["id"] for v, _ in judged.pairs if where(v)]
    folds = []
    for fold in (0, 1):
        chooses = set(selected[fold::2])
        halves = {"choose": judged.subset(lambda v: v["id"] in chooses),
                  "read": judged.subset(lambda v: where(v) and v["id"] not in chooses)}
        vanilla = {side: rate([flag(v) for v, _ in half.pairs])["rate"] for side, half in halves.items()}
        fits = [t for t in halves["choose"].thresholds(step)
                if halves["choose"].read_at(t, rates)[name] >= vanilla["choose"] - tolerance - 1e-9]
        threshold = max(fits) if fits else None
        row: dict[str, Any] = {"fold": fold, "threshold": threshold}
        for side, half in halves.items():
            row[side] = {"prompts": len(half.pairs), "vanilla": vanilla[side],
                         "at_threshold": None if threshold is None else half.read_at(threshold, rates)[name]}
        folds.append(row)
    return folds
