"""`python -m bench.report [SUMMARY.json ...] --out DIR`: PNG plots from `bench.eval` results.

- harmlessness_vs_overrefusal.png: per run (model, and --tag), vanilla -> its strategy (RAIN or a baseline),
  harmlessness (HH judge, else 1 - AdvBench attack success) against XSTest safe-prompt refusal (like the RAIN
  paper's harmlessness figure), each mode a point;
- attack_success.png: AdvBench attack success by run and mode, with 95% intervals;
- attack_vs_overhead.png: AdvBench attack success against the overhead ratio, each mode a point (vanilla at 1):
  what each strategy buys for what it costs;
- overhead_ratio.png: distribution of the server's `overhead_ratio` (RAIN latency / vanilla estimate);
- iterations_per_commit.png: distribution of search iterations behind each committed token set;
- the safety frontier, every mode of every pairing (generator and judge) a point with 95% intervals, from runs of
  the same --tag on AdvBench+GCG, XSTest and benign prompts: frontier_cost.png (attack success against the
  latency ratio to vanilla's on benign and on harmful prompts), frontier_refusal.png (attack success against the
  refusal of XSTest's safe prompts and of benign ones) and gated_outcomes.png (gated answers passed, rewritten
  and refused: their share of the answers and of the time), and frontier.md, the same points as a table;
and copies each summary JSON and Markdown table next to them.
"""
from __future__ import annotations

import argparse
import json
import random
import shutil
import textwrap
from pathlib import Path
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.lines  # noqa: E402
import matplotlib.patches  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402

from .eval.client import run_key  # noqa: E402
from .eval.runs import commit_iterations, mode_label, overhead_ratio  # noqa: E402

COLORS = {"vanilla": "#888888", "rain": "#1f77b4", "self_check": "#ff7f0e", "best_of_n": "#2ca02c", "gated": "#d62728"}
MODES = ("vanilla", "rain")  # a summary's modes: vanilla, and its strategy (RAIN or a baseline) as "rain"


def load(paths: Sequence[Path]) -> list[dict]:
    out = []
    for p in paths:
        s = json.loads(Path(p).read_text())
        if "settings" in s and "suite" in s["settings"]:
            out.append(s)
    return out


def label(summary: dict) -> str:
    """The run's name in plots: its model, and its --tag when it has one (RAIN runs with other settings)."""
    tag = summary.get("tag")
    return summary["settings"]["model"] + (f"\n{tag}" if tag else "")


def rain_of(summary: dict) -> dict:
    """The `rain` settings of a summary's strategy mode."""
    return summary["settings"].get("rain", {})


def color(mode: str, summary: dict) -> str:
    return COLORS["vanilla"] if mode == "vanilla" else COLORS[rain_of(summary).get("strategy", "rain")]


def _by(summaries: list[dict], suite: str) -> dict[str, dict]:
    """run label -> the (last given) summary of `suite`."""
    return {label(s): s for s in summaries if s["settings"]["suite"] == suite}


def records(summary: dict) -> list[dict]:
    """The summary's own records: a results file also keeps RAIN runs made with other settings."""
    path = Path(summary.get("results", ""))
    if not path.is_file():
        return []
    settings = summary.get("settings", {})
    runs = tuple(run_key(m, settings.get("rain", {})) + "/" for m in settings.get("modes", ["vanilla", "rain"]))
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if "_meta" not in r and r.get("key", "").startswith(runs)]


def harmless_vs_overrefusal(summaries: list[dict], out: Path) -> Optional[Path]:
    xs, hh, adv = _by(summaries, "xstest"), _by(summaries, "hh"), _by(summaries, "advbench-gcg") or _by(summaries, "advbench")
    fig, ax = plt.subplots(figsize=(6, 4.5))
    plotted = False
    for run, x in xs.items():
        over = {m: v["rate"] for m, v in x["metrics"]["safe_refusal_xstest_match"].items()}
        if run in hh and "harmless" in hh[run]["metrics"]:
            harm, measure = {m: v["rate"] for m, v in hh[run]["metrics"]["harmless"].items()}, "HH harmless (judge)"
        elif run in adv:
            harm, measure = {m: 1 - v["rate"] for m, v in adv[run]["metrics"]["attack_success"].items()}, "1 - AdvBench ASR"
        else:
            continue
        modes = [m for m in MODES if m in over and m in harm]
        for m in modes:
            ax.scatter(100 * over[m], 100 * harm[m], color=color(m, x), s=60, zorder=3)
        if len(modes) == 2:
            ax.annotate("", xy=(100 * over["rain"], 100 * harm["rain"]), xytext=(100 * over["vanilla"], 100 * harm["vanilla"]),
                        arrowprops={"arrowstyle": "->", "color": "#444444"})
        x, y = 100 * over[modes[-1]], 100 * harm[modes[-1]]
        below = y > 85  # a label above a point near the top would run into the title
        name = f"{run} {mode_label(modes[-1], rain_of(xs[run]))}"
        ax.annotate(f"{name}\n({measure})", (x, y), fontsize=7, xytext=(6, -6 if below else 5),
                    textcoords="offset points", va="top" if below else "bottom")
        plotted = True
    if not plotted:
        plt.close(fig)
        return None
    _legend(ax)
    ax.set(xlabel="XSTest safe prompts refused (%)  <- better", ylabel="harmlessness (%)  better ->",
           title="Harmlessness vs over-refusal", xlim=(-2, 102), ylim=(-2, 102))
    return _save(fig, out / "harmlessness_vs_overrefusal.png")


def _legend(ax, loc: str = "lower right") -> None:
    for name, c in COLORS.items():
        ax.scatter([], [], color=c, label=name)
    ax.legend(loc=loc, fontsize=8)


def attack_success(summaries: list[dict], out: Path) -> Optional[Path]:
    gcg = _by(summaries, "advbench-gcg")
    suite = gcg or _by(summaries, "advbench")
    rows = [(run, m, v) for run, s in suite.items() for m, v in s["metrics"]["attack_success"].items()]
    if not rows:
        return None
    runs = list(dict.fromkeys(r[0] for r in rows))
    fig, ax = plt.subplots(figsize=(1.8 + 1.6 * len(runs), 4))
    for j, mode in enumerate(MODES):
        for i, run in enumerate(runs):
            v = next((r[2] for r in rows if r[0] == run and r[1] == mode), None)
            if v is None:
                continue
            y = 100 * v["rate"]
            err = [[y - 100 * v["ci95"][0]], [100 * v["ci95"][1] - y]]
            ax.bar(i + (j - 0.5) * 0.38, y, 0.36, yerr=err, color=color(mode, suite[run]), capsize=3)
            ax.text(i + (j - 0.5) * 0.38, y + 1, f"{y:.0f}%", ha="center", va="bottom", fontsize=8)
    prompts = {r[0]: r[2]["n"] for r in rows}  # both modes answer the same prompts
    ax.set_xticks(range(len(runs)), [f"{run}\n{prompts[run]} prompts" for run in runs], fontsize=8)
    ax.set(ylabel="attack success (%)", title="AdvBench" + (" + GCG suffixes" if gcg else "") + ": attack success", ylim=(0, 105))
    _legend(ax, "upper right")
    return _save(fig, out / "attack_success.png")


def overhead_points(summaries: list[dict]) -> dict[str, tuple[float, float, str]]:
    """name -> (mean overhead ratio, attack success %, colour) of each mode of every AdvBench run; vanilla
    costs 1 by definition, and appears once per model and prompt count (every run shares it)."""
    points: dict[str, tuple[float, float, str]] = {}
    for run, s in (_by(summaries, "advbench-gcg") or _by(summaries, "advbench")).items():
        for mode, v in s["metrics"]["attack_success"].items():
            overhead = 1.0 if mode == "vanilla" else s["cost"][mode].get("overhead_ratio_mean")
            if overhead is not None and v["n"]:
                name = s["settings"]["model"] if mode == "vanilla" else run.replace("\n", " ")
                points[f"{name} {mode_label(mode, rain_of(s))} (n={v['n']})"] = (overhead, 100 * v["rate"], color(mode, s))
    return points


def attack_vs_overhead(summaries: list[dict], out: Path) -> Optional[Path]:
    """What each strategy buys for what it costs: one point per mode."""
    gcg = _by(summaries, "advbench-gcg")
    points = overhead_points(summaries)
    if not points:
        return None
    fig, ax = plt.subplots(figsize=(7, 5))
    for i, (name, (x, y, c)) in enumerate(points.items()):
        ax.scatter(x, y, color=c, s=60, zorder=3)
        # wrapped, and alternately below and above the point: neighbours often share an attack rate
        ax.annotate(textwrap.fill(name, 26), (x, y), fontsize=6, xytext=(5, -18 if i % 2 else 4),
                    textcoords="offset points")
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.set_xlim(0.8, 2 * max(x for x, _, _ in points.values()))
    ax.set(xlabel="latency overhead (worker wall time / vanilla estimate, log)  <- cheaper", ylabel="attack success (%)  <- better",
           title="AdvBench" + (" + GCG suffixes" if gcg else "") + ": attack success vs cost", ylim=(-5, 110))
    _legend(ax, "center right")
    return _save(fig, out / "attack_vs_overhead.png")


def _rain_stats(summaries: list[dict]) -> dict[str, dict[str, list[float]]]:
    """run label -> {"overhead": [...], "iterations": [...]} over every HTTP suite's RAIN records."""
    stats: dict[str, dict[str, list[float]]] = {}
    for s in summaries:
        for r in records(s):
            if r.get("mode") != "rain" or not r.get("rain"):
                continue
            st = stats.setdefault(label(s), {"overhead": [], "iterations": []})
            ratio = overhead_ratio(r["rain"])
            if ratio is not None:
                st["overhead"].append(ratio)
            st["iterations"] += commit_iterations(r["rain"])
    return stats


def histogram(stats: dict[str, dict[str, list[float]]], key: str, xlabel: str, title: str, path: Path) -> Optional[Path]:
    data = {m: v[key] for m, v in stats.items() if v[key]}
    if not data:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    for run, xs in data.items():
        xs = sorted(xs)
        name = run.replace("\n", " ")
        ax.hist(xs, bins=30, alpha=0.6, label=f"{name} (n={len(xs)}, median {xs[len(xs) // 2]:.1f})")
    ax.set(xlabel=xlabel, ylabel="count", title=title)
    ax.legend(fontsize=8)
    return _save(fig, path)


def _save(fig: Any, path: Path, rect: Optional[tuple[float, float, float, float]] = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout(rect=rect)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# --- the safety frontier ---------------------------------------------------------------------------------------

FRONTIER_SUITES = ("advbench-gcg", "xstest", "benign")
MARKERS = "osD^vP*X"
Interval = tuple[float, float, float]  # (value, low, high), in percent or as a ratio


@dataclass
class Point:
    """One mode of one pairing, measured on the frontier's suites (each summary compares it with vanilla
    on the same prompts)."""
    pairing: str
    mode: str
    color: str
    suites: dict[str, dict] = field(default_factory=dict)  # suite -> summary
    vanilla: bool = False

    def metric(self, suite: str, name: str) -> Optional[Interval]:
        s = self.suites.get(suite)
        r = s and s["metrics"].get(name, {}).get("vanilla" if self.vanilla else "rain")
        return (100 * r["rate"], 100 * r["ci95"][0], 100 * r["ci95"][1]) if r and r["n"] else None

    def latency_ratio(self, suite: str) -> Optional[Interval]:
        """Mean latency over vanilla's on the same prompts in the same run, with a paired bootstrap interval."""
        s = self.suites.get(suite)
        if not s:
            return None
        if self.vanilla:
            return (1.0, 1.0, 1.0)
        pairs = _latency_pairs(s)
        if pairs:
            return _ratio_interval(pairs)
        ratio = s.get("latency_ratio_rain_over_vanilla")  # records not kept: the summary's ratio, no interval
        return (ratio, ratio, ratio) if ratio else None


def served_judge(summary: dict) -> Optional[str]:
    """The judge model named in a run's answers (rain-serve's `rain.judge`), if its records are kept."""
    return next((r["rain"].get("judge") for r in records(summary) if r.get("mode") == "rain" and r.get("rain")), None)


def pairing_of(summary: dict, judges: dict[str, str]) -> str:
    """Generator and judge: the served model judging itself, or the server's judge model (for a run whose
    records are gone, the one `judges` names for its generator)."""
    if rain_of(summary).get("judge") != "served":
        return f"{summary['settings']['model']} + itself"
    model = summary["settings"]["model"]
    return f"{model} + {served_judge(summary) or judges.get(model, 'served judge')}"


def frontier_points(summaries: list[dict]) -> list[Point]:
    """Every (pairing, --tag) with summaries on the frontier's suites is a mode's point. Vanilla is one more per
    generator and set of prompts (from the same summaries: every run measures vanilla beside its mode), so that
    each mode can be read against vanilla on its own prompts."""
    modes: dict[tuple[str, str], Point] = {}
    judges = {s["settings"]["model"]: j for s in summaries if rain_of(s).get("judge") == "served" and (j := served_judge(s))}
    for s in summaries:
        suite = s["settings"]["suite"]
        if suite not in FRONTIER_SUITES or not s.get("tag"):
            continue
        pairing = pairing_of(s, judges)
        mode = f"{mode_label('rain', rain_of(s)).removesuffix(' (served judge)')} [{s['tag']}]"
        modes.setdefault((pairing, mode), Point(pairing, mode, color("rain", s))).suites[suite] = s
    vanillas: dict[tuple, Point] = {}
    for p in modes.values():
        generator = next(iter(p.suites.values()))["settings"]["model"]
        prompts = tuple(sorted((suite, _prompts(s)) for suite, s in p.suites.items()))
        vanillas.setdefault((generator, prompts), Point(generator, "vanilla", COLORS["vanilla"], dict(p.suites), vanilla=True))
    return list(vanillas.values()) + list(modes.values())


def _prompts(summary: dict) -> int:
    """How many prompts a summary's vanilla answered (every metric of a suite counts the same ones)."""
    metrics = summary["metrics"]
    first = metrics["attack_success"] if "attack_success" in metrics else next(iter(metrics.values()))
    return first["vanilla"]["n"]


def _latency_pairs(summary: dict) -> list[tuple[float, float]]:
    """(vanilla, mode) latency of each prompt both answered, from the summary's records."""
    by = {m: {r["id"]: r["latency_s"] for r in records(summary) if r["mode"] == m} for m in ("vanilla", "rain")}
    return [(v, by["rain"][i]) for i, v in by["vanilla"].items() if i in by["rain"]]


def _ratio_interval(pairs: list[tuple[float, float]], resamples: int = 2000, seed: int = 0) -> Interval:
    def ratio(ps: list[tuple[float, float]]) -> float:
        return sum(r for _, r in ps) / sum(v for v, _ in ps)

    rng = random.Random(seed)
    boot = sorted(ratio([rng.choice(pairs) for _ in pairs]) for _ in range(resamples))
    return ratio(pairs), boot[int(0.025 * resamples)], boot[int(0.975 * resamples) - 1]


def _errorbar(ax, x: Interval, y: Interval, color_: str, marker: str) -> None:
    ax.errorbar(x[0], y[0], xerr=[[x[0] - x[1]], [x[2] - x[0]]], yerr=[[y[0] - y[1]], [y[2] - y[0]]],
                color=color_, marker=marker, markersize=7, capsize=2, linestyle="none", alpha=0.85)


def _frontier_panels(points: list[Point], panels: list[tuple[str, Any, str]], title: str, path: Path,
                     log_x: bool = False) -> Optional[Path]:
    """Attack success (AdvBench+GCG) against one x quantity per panel: (panel title, Point -> Interval, x label)."""
    pairings = list(dict.fromkeys(p.pairing for p in points))
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 5.2), squeeze=False)
    plotted = False
    for ax, (name, x_of, xlabel) in zip(axes[0], panels):
        located = [(p, x, y) for p in points
                   if (x := x_of(p)) is not None and (y := p.metric("advbench-gcg", "attack_success")) is not None]
        for p, x, y in located:
            _errorbar(ax, x, y, p.color, MARKERS[pairings.index(p.pairing) % len(MARKERS)])
            tag = p.mode if p.vanilla else p.mode.split(" [")[1].rstrip("]")  # the run's --tag tells its settings
            ax.annotate(tag, (x[0], y[0]), fontsize=6, xytext=(4, 3), textcoords="offset points")
            plotted = True
        if log_x and located and max(x[2] for _, x, _ in located) > 5:  # ratios over a decade or more; a narrow range reads better linear
            ax.set_xscale("log")
            ax.xaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
            ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set(title=name, xlabel=xlabel, ylabel="AdvBench+GCG attack success (%)  <- better", ylim=(-5, 105))
    if not plotted:
        plt.close(fig)
        return None
    handles = [matplotlib.lines.Line2D([], [], marker=MARKERS[i % len(MARKERS)], color="#444444", linestyle="none", label=pairing)
               for i, pairing in enumerate(pairings)]
    handles += [matplotlib.lines.Line2D([], [], marker="s", color=c, linestyle="none", label=mode) for mode, c in COLORS.items()]
    fig.legend(handles=handles, fontsize=7, loc="lower center", ncol=3)
    fig.suptitle(title)
    return _save(fig, path, rect=(0, 0.05 + 0.035 * ((len(handles) + 2) // 3), 1, 1))


def frontier_cost(points: list[Point], out: Path) -> Optional[Path]:
    return _frontier_panels(points, [
        ("on benign prompts", lambda p: p.latency_ratio("benign"), "mean latency / vanilla's, benign  <- cheaper"),
        ("on harmful prompts", lambda p: p.latency_ratio("advbench-gcg"), "mean latency / vanilla's, AdvBench+GCG  <- cheaper"),
    ], "Attack success against cost", out / "frontier_cost.png", log_x=True)


def frontier_refusal(points: list[Point], out: Path) -> Optional[Path]:
    return _frontier_panels(points, [
        ("XSTest safe prompts", lambda p: p.metric("xstest", "safe_refusal_xstest_match"), "safe prompts refused (%)  <- better"),
        ("benign prompts", lambda p: p.metric("benign", "refusal_patterns"), "benign prompts refused (%)  <- better"),
    ], "Attack success against over-refusal", out / "frontier_refusal.png")


def _cell(x: Optional[Interval], percent: bool = True) -> str:
    if x is None:
        return "–"
    return f"{x[0]:.0f}% [{x[1]:.0f}, {x[2]:.0f}]" if percent else f"{x[0]:.2f}x [{x[1]:.2f}, {x[2]:.2f}]"


def frontier_table(points: list[Point], out: Path) -> Optional[Path]:
    """The frontier's points as Markdown: each cell the rate or ratio with its 95% interval, and its prompts."""
    if not points:
        return None
    def n(p: Point, suite: str) -> str:
        s = p.suites.get(suite)
        return str(_prompts(s)) if s else "–"

    head = ("| pairing | mode | AdvBench+GCG attack success | XSTest safe refused | benign refused | latency / vanilla, benign "
            "| latency / vanilla, AdvBench+GCG | prompts (AdvBench, XSTest safe, benign) |")
    lines = [head, "|" + "---|" * 8]
    for p in sorted(points, key=lambda p: (p.pairing.split(" + ")[0], not p.vanilla, p.pairing, p.mode)):
        xs = p.suites.get("xstest")
        safe = xs["metrics"]["safe_refusal_xstest_match"]["vanilla"]["n"] if xs else "–"
        lines.append(f"| {p.pairing} | {p.mode} | {_cell(p.metric('advbench-gcg', 'attack_success'))} "
                     f"| {_cell(p.metric('xstest', 'safe_refusal_xstest_match'))} | {_cell(p.metric('benign', 'refusal_patterns'))} "
                     f"| {_cell(p.latency_ratio('benign'), False)} | {_cell(p.latency_ratio('advbench-gcg'), False)} "
                     f"| {n(p, 'advbench-gcg')}, {safe}, {n(p, 'benign')} |")
    path = out / "frontier.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


GATED_OUTCOMES = ("passed", "rewritten", "refused")


def gated_outcomes(summaries: list[dict], out: Path) -> Optional[Path]:
    """Per gated run and suite: the share of answers passed, rewritten and refused, and the share of the
    run's time each took."""
    bars: list[tuple[str, dict[str, int], dict[str, float]]] = []
    for s in summaries:
        if rain_of(s).get("strategy") != "gated" or s["settings"]["suite"] not in FRONTIER_SUITES:
            continue
        counts, time = dict.fromkeys(GATED_OUTCOMES, 0), dict.fromkeys(GATED_OUTCOMES, 0.0)
        for r in records(s):
            outcome = r.get("mode") == "rain" and (r.get("rain") or {}).get("outcome")
            if outcome in counts:
                counts[outcome] += 1
                time[outcome] += r["latency_s"]
        if sum(counts.values()):
            bars.append((f"{pairing_of(s, {})}\n{s['tag']}, {s['settings']['suite']}", counts, time))
    if not bars:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(13, 2.2 + 0.55 * len(bars)), squeeze=False)
    shades = {"passed": "#2ca02c", "rewritten": "#1f77b4", "refused": "#d62728"}
    for ax, (title, which) in zip(axes[0], (("share of answers", 1), ("share of time", 2))):
        for i, bar in enumerate(bars):
            total, left = sum(bar[which].values()), 0.0
            for o in GATED_OUTCOMES:
                width = 100 * bar[which][o] / total
                ax.barh(i, width, left=left, color=shades[o])
                if width >= 6:
                    ax.text(left + width / 2, i, f"{width:.0f}%", ha="center", va="center", fontsize=7, color="white")
                left += width
        ax.set_yticks(range(len(bars)), [b[0] + f" (n={sum(b[1].values())})" for b in bars], fontsize=7)
        ax.invert_yaxis()
        ax.set(title=title, xlim=(0, 100), xlabel="%")
    fig.legend(handles=[matplotlib.patches.Patch(color=shades[o], label=o) for o in GATED_OUTCOMES], fontsize=8,
               loc="lower center", ncol=3)
    fig.suptitle("Gated answers: passed, rewritten, refused")
    return _save(fig, out / "gated_outcomes.png", rect=(0, 0.6 / (1.6 + 0.55 * len(bars)), 1, 1))


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.report", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("summaries", nargs="*", type=Path, help="summary JSONs (default: bench/results/*.summary.json)")
    p.add_argument("--out", type=Path, default=Path("docs/results"))
    p.add_argument("--no-copy", dest="copy", action="store_false", help="do not copy the summaries and tables to --out")
    args = p.parse_args(argv)
    summaries = load(args.summaries or sorted(Path("bench/results").glob("*.summary.json")))
    stats = _rain_stats(summaries)
    points = frontier_points(summaries)
    made = [
        harmless_vs_overrefusal(summaries, args.out),
        attack_success(summaries, args.out),
        attack_vs_overhead(summaries, args.out),
        histogram(stats, "overhead", "RAIN latency / estimated vanilla latency (overhead_ratio)",
                  "RAIN overhead per request", args.out / "overhead_ratio.png"),
        histogram(stats, "iterations", "search iterations per committed token set", "Iterations per commit",
                  args.out / "iterations_per_commit.png"),
        frontier_cost(points, args.out),
        frontier_refusal(points, args.out),
        frontier_table(points, args.out),
        gated_outcomes(summaries, args.out),
    ]
    if args.copy:  # the summaries and tables behind the plots, to commit beside them
        for src in args.summaries or sorted(Path("bench/results").glob("*.summary.json")):
            for f in (Path(src), Path(str(src).removesuffix(".summary.json") + ".md")):
                if f.is_file() and f.resolve().parent != args.out.resolve():
                    made.append(args.out / f.name)
                    shutil.copyfile(f, made[-1])
    for path in made:
        if path:
            print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
