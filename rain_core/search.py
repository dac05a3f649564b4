"""RAIN: the outer loop (commit one token set at a time, reuse the tree) and the inner loop
(select, simulate, self-evaluate, expand, back up), as shared/RAIN.md states them.

The committed prefix lives in one KV cache that only grows. An iteration feeds the selected path on
top of it, grows the candidates and the simulation side by side as branches of that cache, and then
truncates it back; the model's state at tree nodes is never stored.
"""
from __future__ import annotations

import time
from typing import Iterator

import torch

from .answer import Answer
from .branches import Branch, RowSpec, grow_branches
from .config import GenerationRequest
from .events import Commit, CommitStats, Finish, SearchTick, Totals
from .logprobs import maybe_logprobs
from .tree import Node, Tree, clip_greedy_prior

TAIL_TOKENS = 8  # enough trailing tokens to see the last character of the text


class RainSearch:
    def __init__(self, engine, request: GenerationRequest, prompt: list[int], cache: int,
                 root_logits: torch.Tensor, answer: Answer, generator: torch.Generator, totals: Totals):
        self.cfg = request.rain
        self.runner, self.tokenizer, self.end_ids = engine.runner, engine.tokenizer, engine.end_ids
        self.embedder = engine.embedder
        self.evaluation = engine.evaluator(self.cfg.evaluator, self.cfg.judge).session(request.messages, totals)
        self.cache, self.root_logits = cache, root_logits.reshape(-1)
        # a resumed answer already holds committed sets: they are the prefix (and in the cache)
        self.committed: list[int] = list(answer.ids)
        self.committed_len = len(prompt) + len(self.committed)
        self.answer, self.generator, self.totals = answer, generator, totals
        self.top_logprobs = request.params.logprobs
        self.deadline = time.perf_counter() + self.cfg.time_budget_s if self.cfg.time_budget_s else None
        # set sizes follow the answer depth, which counts commits: a resumed root sits where the last one left it
        self.tree = Tree(Node(tokens=(), prior=1.0, depth=totals.commits - 1), self.cfg)

    # outer loop ------------------------------------------------------------------------------
    def steps(self) -> Iterator[object]:
        """Yield a SearchTick per iteration and a Commit proposal per chosen set; the engine
        commits it to the answer and closes this generator once the answer has ended."""
        try:
            while True:
                iterations = max(self.tree.iterations_to_run(), 0 if self.tree.root.children else 1)
                done = 0
                for _ in range(iterations):
                    if self.deadline and time.perf_counter() > self.deadline:
                        yield Finish("time_budget")
                        return
                    self._iterate()
                    done += 1
                    self.totals.iterations += 1
                    yield SearchTick(self.totals.iterations)
                    if self.tree.should_stop_early():
                        break
                child = self.tree.best_child(self.tree.root)
                stats = CommitStats(done, self.tree.size(), child.n, child.q)
                logprobs = self._advance(child)
                yield Commit(list(child.tokens), "", stats, logprobs=logprobs)
        finally:
            self.evaluation.close()

    def _advance(self, child: Node):
        """Grow the committed cache by the chosen set and make it the root (its subtree is kept);
        return the set's log-probabilities under the model when the request asks for them."""
        self.runner.truncate(self.cache, self.committed_len)
        tokens = list(child.tokens)
        logits = self.runner.forward(self.cache, torch.tensor(tokens), logits_at=torch.arange(len(tokens)),
                                     totals=self.totals)
        # row i of the set's forward predicts token i + 1; the first token was drawn at the old root
        logprobs = maybe_logprobs(torch.cat([self.root_logits.view(1, -1), logits[:-1]]), tokens, self.top_logprobs)
        self.root_logits = logits[-1]
        self.committed_len += len(tokens)
        self.committed.extend(tokens)
        self.tree.commit(child)
        return logprobs

    # inner loop ------------------------------------------------------------------------------
    def _iterate(self) -> None:
        path: list[Node] = []
        node = self.tree.root
        while node.children:
            if self.tree.should_widen(node):
                self._widen(node, path)
            node = self.tree.select_child(node)
            path.append(node)
        leaf = node
        path_ids = [t for n in path for t in n.tokens]
        remaining = self.answer.remaining - len(path_ids)
        leaf_logits = self._state_logits(path_ids)
        set_len = min(self.cfg.set_size(leaf.depth + 1), remaining)
        expand = not leaf.terminal and set_len > 0
        specs = self._candidate_specs(set_len, self.cfg.num_candidates - 1) if expand and set_len > 1 else []
        simulate = not leaf.terminal and remaining > 0 and not self._ends_sentence(self.committed + path_ids)
        if simulate:
            cap = min(remaining, self.cfg.simulation_max_tokens or remaining)
            specs.append(RowSpec(cap, temperature=self.cfg.simulation_temperature, stops_at_sentence=True))
        branches = self._grow(leaf_logits, specs, path_ids)
        simulation = branches.pop().tokens if simulate else []

        text = self.tokenizer.decode(self.committed + path_ids + simulation, skip_special_tokens=True)
        value = self.evaluation.evaluate(text).value
        if expand:
            self._expand(leaf, leaf_logits, branches, set_len, remaining)
        self.tree.backup(leaf, value)
        if path:
            self._update_similarity(path, simulation, value)

    def _state_logits(self, path_ids: list[int]) -> torch.Tensor:
        """Next-token logits after the committed prefix plus `path_ids` (left in the cache)."""
        if not path_ids:
            return self.root_logits
        return self.runner.forward(self.cache, torch.tensor(path_ids), totals=self.totals)[-1]

    def _grow(self, logits: torch.Tensor, specs: list[RowSpec], path_ids: list[int]) -> list[Branch]:
        try:
            return grow_branches(self.runner, self.cache, logits, specs, self.generator, self.end_ids,
                                 lambda ids: self._ends_sentence(self.committed + path_ids + ids), self.totals)
        finally:
            self.runner.truncate(self.cache, self.committed_len)

    def _candidate_specs(self, length: int, samples: int) -> list[RowSpec]:
        c = self.cfg
        greedy = RowSpec(length, greedy=True, temperature=c.candidate_temperature, top_k=c.candidate_top_k, top_p=c.candidate_top_p)
        sampled = RowSpec(length, temperature=c.candidate_temperature, top_k=c.candidate_top_k, top_p=c.candidate_top_p)
        return [greedy] + [sampled] * samples

    def _ends_sentence(self, ids: list[int]) -> bool:
        tail = self.tokenizer.decode(ids[-TAIL_TOKENS:], skip_special_tokens=True)
        return bool(tail) and tail[-1] in self.cfg.simulation_stop_chars

    def _expand(self, leaf: Node, logits: torch.Tensor, branches: list[Branch], set_len: int, remaining: int) -> None:
        if set_len == 1:  # the most likely tokens, priors renormalised over them
            probs, tokens = torch.softmax(logits, -1).topk(self.cfg.num_candidates)
            sets = [(t,) for t in tokens.tolist()]
            priors = (probs / probs.sum()).tolist()
            terminal = [t in self.end_ids or remaining <= 1 for t in tokens.tolist()]
        else:
            distinct = _distinct(branches)
            greedy, sampled = distinct[0], distinct[1:]
            sets = [tuple(b.tokens) for b in distinct]
            sampled_priors = [b.prob for b in sampled]
            priors = [clip_greedy_prior(greedy.prob, sampled_priors) if sampled else greedy.prob] + sampled_priors
            terminal = [b.ended or len(b.tokens) >= remaining for b in distinct]
        self.tree.expand(leaf, sets, priors, terminal)

    def _widen(self, node: Node, path: list[Node]) -> None:
        """Add one child that is not there yet: the next most likely token, or a fresh sequence."""
        path_ids = [t for n in path for t in n.tokens]
        remaining = self.answer.remaining - len(path_ids)
        set_len = min(self.cfg.set_size(node.depth + 1), remaining)
        logits = self._state_logits(path_ids)
        existing = {c.tokens for c in node.children}
        if set_len == 1:
            probs, tokens = torch.softmax(logits, -1).topk(self.cfg.num_candidates + len(existing))
            scale = probs[: self.cfg.num_candidates].sum()
            pick = next(i for i, t in enumerate(tokens.tolist()) if (t,) not in existing)
            token = int(tokens[pick])
            self.tree.add_child(node, (token,), float(probs[pick] / scale), token in self.end_ids or remaining <= 1)
        else:
            fresh = [b for b in self._grow(logits, self._candidate_specs(set_len, 1), path_ids) if tuple(b.tokens) not in existing]
            if fresh:
                b = fresh[0]
                self.tree.add_child(node, tuple(b.tokens), b.prob, b.ended or len(b.tokens) >= remaining)
        self.runner.truncate(self.cache, self.committed_len)

    def _update_similarity(self, path: list[Node], simulation: list[int], value: float) -> None:
        """Embed, for each path node, its own tokens plus all generated below it this iteration."""
        texts, below = [], list(simulation)
        for node in reversed(path):
            below = list(node.tokens) + below
            texts.append(self.tokenizer.decode(below, skip_special_tokens=True))
        self.tree.update_similarity(path, self.embedder.embed(texts[::-1]), value)


def _distinct(branches: list[Branch]) -> list[Branch]:
    """Drop repeated sequences, keeping the first (the greedy one leads)."""
    seen, out = set(), []
    for b in branches:
        if tuple(b.tokens) not in seen:
            seen.add(tuple(b.tokens))
            out.append(b)
    return out
