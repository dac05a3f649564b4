"""The HTTP safety suites: AdvBench attack success, XSTest over-refusal, HH red-team harmlessness, and what a
mode costs and refuses on benign traffic (AlpacaEval)."""
from __future__ import annotations

from argparse import Namespace
from typing import Any

from . import data
from .judges import EvalFormat, RefusalJudge, SelfEvalJudge, xstest_refused
from .refusal import ModelRefusalJudge, PatternRefusalJudge
from .metrics import rate
from .runs import by_mode, cost, generate, latency_ratio, mode_label, paired, rates_by_mode, self_check_held_out, self_check_sweep
from .store import Store, sidecar

Result = tuple[dict[str, Any], list[dict]]


def _costs(groups: dict[str, list[dict]]) -> dict[str, Any]:
    return {"cost": {m: cost(rs) for m, rs in groups.items()}, "latency_ratio_rain_over_vanilla": latency_ratio(groups)}


def _row(mode: str, ctx: dict, costs: dict, **cells: Any) -> dict:
    c = costs["cost"][mode]
    return {"mode": mode_label(mode, ctx["settings"]["rain"]), **cells, "latency s": c["latency_s_mean"], "overhead ratio": c.get("overhead_ratio_mean"),
            "iters/commit": c.get("iterations_per_commit_mean")}


def _fmt(r: dict) -> str:
    return f"{100 * r['rate']:.1f}% [{100 * r['ci95'][0]:.0f}, {100 * r['ci95'][1]:.0f}]"


def flips(groups: dict[str, list[dict]], flag) -> dict[str, int]:
    """On the same prompts, how many go each way between vanilla and RAIN (what a rate difference hides)."""
    pairs = [(flag(v), flag(r)) for v, r in zip(groups["vanilla"], groups["rain"])]
    return {"vanilla_only": sum(v and not r for v, r in pairs), "rain_only": sum(r and not v for v, r in pairs),
            "both": sum(v and r for v, r in pairs), "neither": sum(not (v or r) for v, r in pairs)}


def advbench(args: Namespace) -> Result:
    items = data.advbench(args.data, args.limit, args.seed, gcg=args.gcg, injection=args.inject)
    name = ("advbench-gcg" if args.gcg else "advbench") + (f"-inject-{args.inject}" if args.inject else "")
    records, ctx = generate(args, name, items, {"gcg": args.gcg, "inject": args.inject})
    judge = RefusalJudge(args.data)
    groups = paired(by_mode(records))
    success = lambda r: not judge.refused(r["reply"])  # noqa: E731
    metrics: dict[str, Any] = {"attack_success": rates_by_mode(groups, success)}
    if args.gcg:
        for attack in ("own", "transfer"):
            metrics[f"attack_success_{attack}_suffix"] = rates_by_mode(groups, success, lambda r: r["meta"]["attack"] == attack)
    asr = metrics["attack_success"]
    if "rain" in asr and "vanilla" in asr and asr["vanilla"]["rate"]:
        metrics["relative_reduction"] = 1 - asr["rain"]["rate"] / asr["vanilla"]["rate"]
    if "rain" in groups and "vanilla" in groups:
        metrics["paired_flips"] = flips(groups, success)
    sweep = self_check_sweep(groups, {"attack_success": (success, lambda r: True)})
    if sweep:
        metrics["self_check_by_threshold"] = sweep
    costs = _costs(groups)
    table = []
    for m in groups:
        cells = {"prompts": asr[m]["n"], "attack success [95% CI]": _fmt(asr[m])}
        if args.gcg:
            for attack in ("own", "transfer"):
                sub = metrics[f"attack_success_{attack}_suffix"][m]
                cells[f"{attack} suffix (n={sub['n']})"] = _fmt(sub) if sub["n"] else None
        table.append(_row(m, ctx, costs, **cells))
    return {**ctx, "judge": judge.name, "metrics": metrics, **costs}, table


def xstest(args: Namespace) -> Result:
    items = data.xstest(args.data, args.limit, args.seed)
    records, ctx = generate(args, "xstest", items, {})
    judge = RefusalJudge(args.data)
    groups = paired(by_mode(records))
    metrics: dict[str, Any] = {}
    for label in ("safe", "unsafe"):
        where = lambda r, label=label: r["meta"]["label"] == label  # noqa: E731
        metrics[f"{label}_refusal_xstest_match"] = rates_by_mode(groups, lambda r: xstest_refused(r["reply"]), where)
        metrics[f"{label}_refusal_gcg_substrings"] = rates_by_mode(groups, lambda r: judge.refused(r["reply"]), where)
    safe = metrics["safe_refusal_xstest_match"]
    if "rain" in safe and "vanilla" in safe:
        metrics["safe_compliance_drop_points"] = 100 * (safe["rain"]["rate"] - safe["vanilla"]["rate"])
        only_safe = {m: [r for r in rs if r["meta"]["label"] == "safe"] for m, rs in groups.items()}
        metrics["safe_refusal_flips_xstest_match"] = flips(only_safe, lambda r: xstest_refused(r["reply"]))
    complied, is_safe = (lambda r: not xstest_refused(r["reply"])), (lambda r: r["meta"]["label"] == "safe")
    sweep = self_check_sweep(groups, {
        "safe_compliance": (complied, is_safe),
        "unsafe_refusal": (lambda r: xstest_refused(r["reply"]), lambda r: r["meta"]["label"] == "unsafe")})
    if sweep:
        metrics["self_check_by_threshold"] = sweep
        metrics["self_check_held_out"] = self_check_held_out(groups, "safe_compliance", complied, is_safe)
    costs = _costs(groups)
    table = [_row(m, ctx, costs, **{
        "safe prompts": safe[m]["n"],
        "safe compliance (XSTest match)": _fmt({**safe[m], "rate": 1 - safe[m]["rate"], "ci95": [1 - safe[m]["ci95"][1], 1 - safe[m]["ci95"][0]]}),
        "safe refusal (GCG substrings)": _fmt(metrics["safe_refusal_gcg_substrings"][m]),
        "unsafe prompts": metrics["unsafe_refusal_xstest_match"][m]["n"],
        "unsafe refusal (XSTest match)": _fmt(metrics["unsafe_refusal_xstest_match"][m]),
        "unsafe refusal (GCG substrings)": _fmt(metrics["unsafe_refusal_gcg_substrings"][m]),
    }) for m in groups]
    judges = {"xstest_match": "XSTest start-of-reply string match (classify_completions_strmatch.py)", "gcg_substrings": judge.name}
    return {**ctx, "judges": judges, "metrics": metrics, **costs}, table


def judge_records(args: Namespace, records: list[dict], messages_of: dict[str, list[dict]]) -> tuple[str, dict[str, float]]:
    """Score every record with the model judge, resumably (`<out>.judge.jsonl`); return its name and
    the harmless value of each record key."""
    from .local import Local

    local = Local(args.judge_model, args.threads, args.max_chars)
    judge = SelfEvalJudge(local, EvalFormat.parse(args.judge_format), args.judge_threshold)
    # values are kept before the threshold, so another threshold reuses them
    store = Store(sidecar(args.out, ".judge.jsonl"), {"judge": judge.scorer, "max_chars": args.max_chars})
    from tqdm import tqdm

    for r in tqdm([r for r in records if r["key"] not in store], desc="judging", unit="reply"):
        store.add({"key": r["key"], "harmless": judge.harmless(messages_of[r["id"]], r["reply"])})
    return judge.name, {k: v["harmless"] for k, v in store.records.items()}


def hh(args: Namespace) -> Result:
    items = data.hh_red_team(args.data, args.limit, args.seed)
    records, ctx = generate(args, "hh", items, {})
    groups = paired(by_mode(records))
    refusal = RefusalJudge(args.data)
    metrics: dict[str, Any] = {"refusal_gcg_substrings": rates_by_mode(groups, lambda r: refusal.refused(r["reply"]))}
    judges = {"refusal": refusal.name}
    if args.judge_model != "none":
        judges["harmless"], values = judge_records(args, [r for rs in groups.values() for r in rs],
                                                   {it.id: it.messages for it in items})
        metrics["harmless"] = rates_by_mode(groups, lambda r: values[r["key"]] > args.judge_threshold)
        metrics["harmless_value_mean"] = {m: sum(values[r["key"]] for r in rs) / len(rs) for m, rs in groups.items() if rs}
    costs = _costs(groups)
    table = []
    for m in groups:
        cells: dict[str, Any] = {"prompts": len(groups[m])}
        if "harmless" in metrics:
            cells["harmless (model judge)"] = _fmt(metrics["harmless"][m])
            cells["mean judge value"] = metrics["harmless_value_mean"][m]
        cells["refusal (GCG substrings)"] = _fmt(metrics["refusal_gcg_substrings"][m])
        table.append(_row(m, ctx, costs, **cells))
    return {**ctx, "judges": judges, "metrics": metrics, **costs}, table


def benign(args: Namespace) -> Result:
    """Ordinary requests: per mode the refusal rate (three text judges, and the model judge with
    --refusal-model), the share of answers that differ from vanilla's on the same prompt, and the latency
    against vanilla's on the same prompts, server and concurrency (both modes are in one run)."""
    items = data.benign(args.data, args.limit, args.seed)
    records, ctx = generate(args, "benign", items, {})
    groups = paired(by_mode(records))
    substrings, patterns = RefusalJudge(args.data), PatternRefusalJudge()
    judges = {"patterns": patterns.name, "gcg_substrings": substrings.name,
              "xstest_match": "XSTest start-of-reply string match (classify_completions_strmatch.py)"}
    metrics: dict[str, Any] = {
        "refusal_patterns": rates_by_mode(groups, lambda r: patterns.refused(r["reply"])),
        "refusal_gcg_substrings": rates_by_mode(groups, lambda r: substrings.refused(r["reply"])),
        "refusal_xstest_match": rates_by_mode(groups, lambda r: xstest_refused(r["reply"])),
    }
    if args.refusal_model != "none":
        model = ModelRefusalJudge(args.refusal_model, args.refusal_threshold, args.threads)
        judges["model"] = model.name
        metrics["refusal_model"] = rates_by_mode(groups, lambda r: model.refused(r["prompt"], r["reply"]))
    if "rain" in groups and "vanilla" in groups:
        metrics["differs_from_vanilla"] = rate([r["reply"] != v["reply"] for v, r in zip(groups["vanilla"], groups["rain"])])
    costs = _costs(groups)
    table = []
    for m in groups:
        cells: dict[str, Any] = {"prompts": len(groups[m]), "refusal (patterns)": _fmt(metrics["refusal_patterns"][m])}
        if "refusal_model" in metrics:
            cells["refusal (model judge)"] = _fmt(metrics["refusal_model"][m])
        cells["refusal (GCG substrings)"] = _fmt(metrics["refusal_gcg_substrings"][m])
        cells["differs from vanilla"] = _fmt(metrics["differs_from_vanilla"]) if m == "rain" and "differs_from_vanilla" in metrics else None
        table.append(_row(m, ctx, costs, **cells))
    return {**ctx, "judges": judges, "metrics": metrics, **costs}, table
