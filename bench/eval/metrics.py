"""Metrics shared by the suites: rates with confidence intervals, AUROC, accuracy, text overlap."""
from __future__ import annotations

import math
import re
from collections import Counter
from typing import Optional, Sequence


def wilson(successes: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion (well behaved at 0% and 100%, unlike the normal one)."""
    if n == 0:
        return (math.nan, math.nan)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def rate(flags: Sequence[bool]) -> dict:
    """{"rate", "n", "ci95"} of a list of booleans."""
    n = len(flags)
    k = sum(bool(f) for f in flags)
    lo, hi = wilson(k, n)
    return {"rate": k / n if n else math.nan, "n": n, "ci95": [lo, hi]}


def auroc(scores: Sequence[float], labels: Sequence[int]) -> float:
    """Area under the ROC curve of `scores` (higher = more positive) against 0/1 `labels`:
    the probability that a random positive outranks a random negative, ties counting one half
    (the Mann-Whitney statistic, computed from average ranks)."""
    pairs = sorted(zip(scores, labels), key=lambda p: p[0])
    pos = sum(1 for _, y in pairs if y)
    neg = len(pairs) - pos
    if pos == 0 or neg == 0:
        return math.nan
    rank_sum, i = 0.0, 0
    while i < len(pairs):
        j = i
        while j + 1 < len(pairs) and pairs[j + 1][0] == pairs[i][0]:
            j += 1
        avg_rank = (i + j) / 2 + 1
        rank_sum += avg_rank * sum(1 for k in range(i, j + 1) if pairs[k][1])
        i = j + 1
    return (rank_sum - pos * (pos + 1) / 2) / (pos * neg)


def accuracy(predictions: Sequence[int], labels: Sequence[int]) -> float:
    return sum(int(p == y) for p, y in zip(predictions, labels)) / len(labels) if labels else math.nan


def pairwise_accuracy(better: Sequence[float], worse: Sequence[float]) -> float:
    """Fraction of pairs where the score of the better item is higher; ties count one half."""
    if not better:
        return math.nan
    wins = sum(1.0 if b > w else 0.5 if b == w else 0.0 for b, w in zip(better, worse))
    return wins / len(better)


def classifier_report(harm_scores: Sequence[float], labels: Sequence[int], threshold: float = 0.0) -> dict:
    """AUROC and accuracy of a harm score (higher = more harmful; predicts harmful when > threshold)."""
    predictions = [int(s > threshold) for s in harm_scores]
    return {"auroc": auroc(harm_scores, labels), "accuracy": accuracy(predictions, labels), "n": len(labels)}


def best_threshold(harmless: Sequence[float], labels: Sequence[int]) -> tuple[float, float]:
    """The threshold on a harmless value (a reply is called harmful at or below it) that is most accurate
    against 0/1 harm `labels`, and that accuracy. Candidates lie halfway between neighbouring values (and
    below them all); of equally accurate ones the lowest wins, which calls fewest replies harmful."""
    ordered = sorted(set(harmless))
    cuts = [ordered[0] - 1e-6] + [(a + b) / 2 for a, b in zip(ordered, ordered[1:])] + [ordered[-1]]
    scored = [(accuracy([int(v <= t) for v in harmless], labels), -t) for t in cuts]
    acc, neg = max(scored)
    return -neg, acc


def squash(x: float) -> float:
    """Map a log-odds to [-1, 1] (tanh(x / 2) = 2 sigmoid(x) - 1)."""
    return math.tanh(x / 2)


_WORD = re.compile(r"\w+")


def token_f1(a: str, b: str) -> float:
    """Unigram F1 between two texts (lower-cased words), like ROUGE-1 F."""
    ta, tb = Counter(_WORD.findall(a.lower())), Counter(_WORD.findall(b.lower()))
    common = sum((ta & tb).values())
    if common == 0:
        return 0.0
    p, r = common / sum(ta.values()), common / sum(tb.values())
    return 2 * p * r / (p + r)


def mean(xs: Sequence[float]) -> Optional[float]:
    xs = [x for x in xs if x is not None and not math.isnan(x)]
    return sum(xs) / len(xs) if xs else None
