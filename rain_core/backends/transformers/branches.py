"""Grow several token branches from one state in lockstep: candidates and simulations of RAIN.

All rows share the cached state; each decode step feeds one token per live row into the same cache
under a tree mask, so ten candidates of ten tokens cost ten forward calls of ten tokens each, and
nothing of the shared prefix is copied or recomputed. Rows may grow from different paths fed on top
of the state as branches of their own (the leaves of one wave of the search), still in one loop.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

from rain_core.backends.transformers.runner import ModelRunner, TreeLayout
from rain_core.backends.transformers.sampling import filtered_probs
from rain_core.events import Totals
from rain_core.search.ops import Branch, RowSpec


def grow_branches(
    runner: ModelRunner,
    cache: int,
    layout: TreeLayout,
    start_logits: torch.Tensor,
    specs: list[RowSpec],
    generator: torch.Generator,
    end_ids: frozenset[int],
    ends_with: Callable[[int, list[int], str], bool],
    totals: Optional[Totals] = None,
) -> list[Branch]:
    """Decode every row until its own end. Row i is branch i of `layout`, which describes the cache
    (a branch's parent, when the caller set one, is the path it grows from); `start_logits` [rows or
    1, vocab] are the next-token logits where each row starts. `ends_with(row, row_ids, chars)` says
    whether the text up to a row ends with one of `chars`. The cache is left holding the branches'
    tokens: the caller truncates it back."""
    branches = [Branch() for _ in specs]
    live = [i for i, s in enumerate(specs) if s.max_len > 0]
    logits = start_logits.expand(len(specs), -1)[live]
    while live:
        tokens, logprobs = _choose(logits, [specs[i] for i in live], generator)
        feed = []
        for row, token, logprob in zip(live, tokens, logprobs):
            branch, spec = branches[row], specs[row]
            branch.tokens.append(token)
            branch.logprob += logprob
            branch.ended = token in end_ids
            done = branch.ended or len(branch.tokens) >= spec.max_len
            if not done and not (spec.stop_chars and ends_with(row, branch.tokens, spec.stop_chars)):
                feed.append(row)
        if not feed:
            break
        positions = [layout.next_position(row) for row in feed]
        position_ids, mask = layout.append(feed, positions)
        ids = torch.tensor([branches[row].tokens[-1] for row in feed])
        out = runner.forward(cache, ids, position_ids, mask, torch.arange(len(feed)), totals=totals)
        logits, live = out, feed
    return branches


def _choose(logits: torch.Tensor, specs: list[RowSpec], generator: torch.Generator) -> tuple[list[int], list[float]]:
    """One token per row and its log-probability, grouping rows that share a sampling filter."""
    tokens = torch.empty(len(specs), dtype=torch.long, device=logits.device)
    logprobs = torch.empty(len(specs), device=logits.device)
    groups: dict[tuple, list[int]] = {}
    for i, s in enumerate(specs):
        groups.setdefault((s.temperature, s.top_k, s.top_p, s.greedy), []).append(i)
    for (temperature, top_k, top_p, greedy), rows in groups.items():
        index = torch.tensor(rows, device=logits.device)
        probs = filtered_probs(logits[index], temperature, top_k, top_p)
        chosen = probs.argmax(-1) if greedy else torch.multinomial(probs, 1, generator=generator).squeeze(-1)
        tokens[index] = chosen
        logprobs[index] = probs.gather(-1, chosen.unsqueeze(-1)).squeeze(-1).log()
    return tokens.tolist(), logprobs.tolist()
