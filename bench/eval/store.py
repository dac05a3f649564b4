"""Results on disk: an append-only JSONL that a rerun resumes, plus the summary JSON and Markdown table.

The first line of a results file is `{"_meta": {...}}`: the settings that change what a record means
(model, max_tokens, preset, ...). Resuming with different settings is refused, so one file never mixes
two experiments. Every later line is one record with a unique "key"; a record is written (and flushed)
as soon as it arrives, so an interrupted run loses at most the requests in flight.
"""
from __future__ import annotations

import json
import math
import threading
from pathlib import Path
from typing import Any, Iterable, Optional


class SettingsMismatch(RuntimeError):
    pass


class Store:
    def __init__(self, path: Path, meta: dict[str, Any]):
        self.path = Path(path)
        self.meta = meta
        self.records: dict[str, dict] = {}
        self._lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists() and self.path.stat().st_size:
            self._load()
        else:
            self._write_line({"_meta": meta})

    def _load(self) -> None:
        with open(self.path, encoding="utf-8") as f:
            lines = f.read().splitlines(keepends=True)
        for i, line in enumerate(lines):
            try:
                row = json.loads(line) if line.strip() else None
                if line.strip() and not line.endswith("\n"):
                    raise ValueError("unterminated line")
            except ValueError:  # a line cut short by a kill: drop it, that item runs again
                if i != len(lines) - 1:
                    raise
                with open(self.path, "w", encoding="utf-8") as f:
                    f.writelines(lines[:-1])
                break
            if row is None:
                continue
            if "_meta" in row:
                self._check(row["_meta"])
            else:
                self.records[row["key"]] = row

    def _check(self, old: dict) -> None:
        diff = {k: (old.get(k), v) for k, v in self.meta.items() if old.get(k) != v}
        if diff:
            raise SettingsMismatch(
                f"{self.path} was written with other settings {diff} (old, new); "
                "pass another --out or the same settings to resume"
            )

    def _write_line(self, row: dict) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            f.flush()

    def __contains__(self, key: str) -> bool:
        return key in self.records

    def add(self, record: dict) -> None:
        with self._lock:
            self.records[record["key"]] = record
            self._write_line(record)

    def select(self, keys: Iterable[str]) -> list[dict]:
        return [self.records[k] for k in keys if k in self.records]


def sidecar(path: Path, suffix: str) -> Path:
    """`bench/results/x.jsonl` -> `bench/results/x<suffix>`."""
    path = Path(path)
    return path.with_name(path.name.removesuffix(".jsonl") + suffix)


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return "–" if math.isnan(v) else f"{v:.3f}"
    if v is None:
        return "–"
    return str(v)


def markdown_table(rows: list[dict]) -> str:
    if not rows:
        return ""
    cols: list[str] = []
    for r in rows:
        cols += [c for c in r if c not in cols]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_cell(r.get(c)) for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def strict_json(v: Any) -> Any:
    """`v` with every NaN (a rate over no prompts, an AUROC of one class) as None: JSON has no NaN,
    and jq or a browser reject the bare `NaN` that Python's json module writes."""
    if isinstance(v, float) and math.isnan(v):
        return None
    if isinstance(v, dict):
        return {k: strict_json(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [strict_json(x) for x in v]
    return v


def write_summary(out: Path, summary: dict, table: list[dict], title: Optional[str] = None,
                  tag: Optional[str] = None) -> tuple[Path, Path]:
    """Write `<out>[.<tag>].summary.json` and `<out>[.<tag>].md`; return both paths."""
    stem = f".{tag}" if tag else ""
    js, md = sidecar(out, stem + ".summary.json"), sidecar(out, stem + ".md")
    js.write_text(json.dumps(strict_json(summary), indent=1, ensure_ascii=False, allow_nan=False) + "\n", encoding="utf-8")
    head = f"## {title}\n\n" if title else ""
    md.write_text(head + markdown_table(table), encoding="utf-8")
    return js, md
