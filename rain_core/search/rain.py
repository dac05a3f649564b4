"""RAIN: the outer loop (commit one token set at a time, reuse the tree) and the inner loop
(select, simulate, self-evaluate, expand, back up), as shared/RAIN.md states them.

The search is a strategy of rain_core/search/ops.py: it asks for model operations on the request's state
(the prompt plus the committed sets) and never touches a model. The model's state at tree nodes is
never stored: a node's state is the committed state plus the path down to it.

A terminal leaf's evaluation cannot change until the next commit: it is never expanded or simulated, so
its answer text and its path's similarity texts are fixed, and both backends answer a repeated judgment
from their verdict memo. The search keeps it (`_settled`) and backs a re-selected terminal leaf up at
once, asking for nothing: the same iteration the paper's search runs, without its round trips. In a wave
of parallel leaves such an iteration takes no place, so the K places go to leaves that need the model.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Optional

import torch

from rain_core.chat.answer import Answer
from rain_core.chat.text import ends_with_any
from rain_core.config import GenerationRequest
from rain_core.events import Commit, CommitStats, Finish, SearchTick, Totals
from rain_core.search.ops import Append, Branch, Embed, Grow, Judge, Ranked, RowSpec, Steps, TopTokens, lockstep
from rain_core.search.tree import Node, Tree, clip_greedy_prior


class RainSearch:
    def __init__(self, request: GenerationRequest, tokenizer, end_ids: frozenset[int], answer: Answer, totals: Totals):
        self.cfg = request.rain
        self.tokenizer, self.end_ids = tokenizer, end_ids
        # a resumed answer already holds committed sets: they are part of the state
        self.committed: list[int] = list(answer.ids)
        self.answer, self.totals = answer, totals
        self.top_logprobs = request.params.logprobs
        self.deadline = time.perf_counter() + self.cfg.time_budget_s if self.cfg.time_budget_s else None
        # set sizes follow the answer depth, which counts commits: a resumed root sits where the last one left it
        self.tree = Tree(Node(tokens=(), prior=1.0, depth=totals.commits - 1), self.cfg)
        self._settled: dict[Node, LeafEvaluation] = {}  # terminal leaves evaluated since the last commit

    # outer loop ------------------------------------------------------------------------------
    def steps(self) -> Steps:
        """Yield a SearchTick per wave and a Commit proposal per chosen set; the engine
        commits it to the answer and closes this generator once the answer has ended."""
        while True:
            iterations = max(self.tree.iterations_to_run(), 0 if self.tree.root.children else 1)
            done = 0
            while done < iterations:
                if self.deadline and time.perf_counter() > self.deadline:
                    yield Finish("time_budget")
                    return
                done += yield from self._wave(self.cfg.parallel_leaves, iterations - done)
                yield SearchTick(self.totals.iterations)
                if self.tree.should_stop_early():
                    break
            child = self.tree.best_child(self.tree.root)
            stats = CommitStats(done, self.tree.size(), child.n, child.q)
            logprobs = yield Append(child.tokens, self.top_logprobs)  # the chosen set becomes the state
            self.committed.extend(child.tokens)
            self.tree.commit(child)
            self._settled.clear()  # the paths below the new root are shorter: their similarity texts change
            yield Commit(list(child.tokens), "", stats, logprobs=logprobs)

    # inner loop ------------------------------------------------------------------------------
    def _wave(self, k: int, budget: int) -> Steps:
        """Up to `budget` iterations, at most `k` of them evaluated together: select leaves under virtual
        loss (each in-flight path counts as visited with a pessimistic value, so the next selection looks
        elsewhere) until k are in flight, evaluate them together, then expand and back up in selection
        order, so the result is deterministic. A settled leaf (module docstring) is backed up as soon as
        it is selected and takes no place. With k = 1 this is the paper's sequential iteration. Returns
        the iterations run."""
        paths: list[list[Node]] = []
        settled = 0
        while len(paths) < k and settled + len(paths) < budget:
            path = yield from self._select()
            leaf = self._leaf(path)
            if leaf in self._settled:
                self._iterate(path, self._settled[leaf])
                settled += 1
                if self.tree.should_stop_early():
                    break
                continue
            if any(leaf is self._leaf(other) for other in paths):
                break  # every other way down is already in flight: evaluating it twice adds nothing
            self.tree.add_virtual_loss(path)
            paths.append(path)
        try:
            evaluations = yield from lockstep([self._evaluate(path) for path in paths])
        finally:
            for path in paths:
                self.tree.release(path)
        for path, evaluation in zip(paths, evaluations):
            self._iterate(path, evaluation)
            leaf = self._leaf(path)
            if leaf.terminal:
                self._settled[leaf] = evaluation
        return settled + len(paths)

    def _iterate(self, path: list[Node], evaluation: "LeafEvaluation") -> None:
        self._apply(path, evaluation)
        self.totals.iterations += 1

    def _leaf(self, path: list[Node]) -> Node:
        return path[-1] if path else self.tree.root

    def _select(self) -> Steps:
        """Walk down by PUCT, widening where RAIN says so; the path below the root."""
        path: list[Node] = []
        node = self.tree.root
        while node.children:
            if self.tree.should_widen(node):
                yield from self._widen(node, path)
            node = self.tree.select_child(node)
            path.append(node)
        return path

    def _evaluate(self, path: list[Node]) -> Steps:
        """The operations of one leaf: grow its candidates and a simulation, judge, embed."""
        leaf = self._leaf(path)
        path_ids = tuple(t for n in path for t in n.tokens)
        remaining = self.answer.remaining - len(path_ids)
        set_len = min(self.cfg.set_size(leaf.depth + 1), remaining)
        expand = not leaf.terminal and set_len > 0
        specs = self._candidate_specs(set_len, self.cfg.num_candidates - 1) if expand and set_len > 1 else []
        simulate = not leaf.terminal and remaining > 0 and not self._ends_clause(self.committed + list(path_ids))
        if simulate:
            cap = min(remaining, self.cfg.simulation_max_tokens or remaining)
            specs.append(RowSpec(cap, temperature=self.cfg.simulation_temperature,
                                 stop_chars=self.cfg.simulation_stop_chars))
        branches = (yield Grow(path_ids, tuple(specs))) if specs else []
        simulation = branches.pop().tokens if simulate else []
        top = (yield TopTokens(path_ids, self.cfg.num_candidates)) if expand and set_len == 1 else None
        text = self.tokenizer.decode(self.committed + list(path_ids) + simulation, skip_special_tokens=True)
        value = (yield Judge(text)).value
        embeddings = (yield Embed(self._similarity_texts(path, simulation))) if path else None
        return LeafEvaluation(value, branches, top, set_len, remaining, expand, embeddings)

    def _apply(self, path: list[Node], e: "LeafEvaluation") -> None:
        leaf = self._leaf(path)
        if e.expand:
            self._expand(leaf, e)
        self.tree.backup(leaf, e.value)
        if path:
            self.tree.update_similarity(path, e.embeddings, e.value)

    def _candidate_specs(self, length: int, samples: int) -> list[RowSpec]:
        c = self.cfg
        greedy = RowSpec(length, greedy=True, temperature=c.candidate_temperature, top_k=c.candidate_top_k, top_p=c.candidate_top_p)
        sampled = RowSpec(length, temperature=c.candidate_temperature, top_k=c.candidate_top_k, top_p=c.candidate_top_p)
        return [greedy] + [sampled] * samples

    def _ends_clause(self, ids: list[int]) -> bool:
        return ends_with_any(self.tokenizer, ids, self.cfg.simulation_stop_chars)

    def _expand(self, leaf: Node, e: "LeafEvaluation") -> None:
        if e.set_len == 1:  # the most likely tokens, priors renormalised over them
            probs = torch.tensor(e.top.probs)  # the float32 values the backend computed
            sets = [(t,) for t in e.top.ids]
            priors = (probs / probs.sum()).tolist()
            terminal = [t in self.end_ids or e.remaining <= 1 for t in e.top.ids]
        else:
            distinct = _distinct(e.branches)
            greedy, sampled = distinct[0], distinct[1:]
            sets = [tuple(b.tokens) for b in distinct]
            sampled_priors = [b.prob for b in sampled]
            priors = [clip_greedy_prior(greedy.prob, sampled_priors) if sampled else greedy.prob] + sampled_priors
            terminal = [b.ended or len(b.tokens) >= e.remaining for b in distinct]
        self.tree.expand(leaf, sets, priors, terminal)

    def _widen(self, node: Node, path: list[Node]) -> Steps:
        """Add one child that is not there yet: the next most likely token, or a fresh sequence."""
        path_ids = tuple(t for n in path for t in n.tokens)
        remaining = self.answer.remaining - len(path_ids)
        set_len = min(self.cfg.set_size(node.depth + 1), remaining)
        existing = {c.tokens for c in node.children}
        if set_len == 1:
            top = yield TopTokens(path_ids, self.cfg.num_candidates + len(existing))
            probs = torch.tensor(top.probs)
            scale = probs[: self.cfg.num_candidates].sum()
            pick = next(i for i, t in enumerate(top.ids) if (t,) not in existing)
            token = top.ids[pick]
            self.tree.add_child(node, (token,), float(probs[pick] / scale), token in self.end_ids or remaining <= 1)
        else:
            grown = yield Grow(path_ids, tuple(self._candidate_specs(set_len, 1)))
            fresh = [b for b in grown if tuple(b.tokens) not in existing]
            if fresh:
                b = fresh[0]
                self.tree.add_child(node, tuple(b.tokens), b.prob, b.ended or len(b.tokens) >= remaining)

    def _similarity_texts(self, path: list[Node], simulation: list[int]) -> tuple[str, ...]:
        """For each path node, its own tokens plus all generated below it this iteration."""
        texts, below = [], list(simulation)
        for node in reversed(path):
            below = list(node.tokens) + below
            texts.append(self.tokenizer.decode(below, skip_special_tokens=True))
        return tuple(texts[::-1])


@dataclass
class LeafEvaluation:
    """What the operations of one leaf found, applied to the tree once the whole wave is back."""

    value: float
    branches: list[Branch]  # candidate sets (set length > 1), in row order
    top: Optional[Ranked]  # the most likely next tokens (set length 1)
    set_len: int
    remaining: int
    expand: bool
    embeddings: Optional[torch.Tensor]


def _distinct(branches: list[Branch]) -> list[Branch]:
    """Drop repeated sequences, keeping the first (the greedy one leads)."""
    seen, out = set(), []
    for b in branches:
        if tuple(b.tokens) not in seen:
            seen.add(tuple(b.tokens))
            out.append(b)
    return out
