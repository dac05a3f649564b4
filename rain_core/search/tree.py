"""Bookkeeping and arithmetic of the RAIN search tree (shared/RAIN.md): no model calls, no text, no I/O.

Where RAIN.md is silent we follow the authors' node class (SafeAILab/RAIN truth/nodes.py; HH/nodes.py is
the same class and is not archived):
- Ties: select_child keeps the earliest child (expansion order) among equal scores, as Python's max does
  in the reference; best_child ranks by n (real + fractional visits, as the reference), then q, then order.
- qmin/qmax are tree-wide (the reference keeps them on the root and copies them when re-rooting), start at
  cfg.q_bounds (or empty with q_normalization="observed", our extension), take the q of every non-root node
  on a backed-up path (the root's own q is excluded, as in the reference) and are not moved by the similarity
  update (the reference does not move them either).
- Similarity compares the node's running-mean embedding, this iteration included, with each sibling's running
  mean; siblings without an embedding are skipped. The update reads nothing backup writes, so the two commute.
- Widening: L = cfg.set_size(children's depth); "the best child's q < 0" is the largest child q (the
  reference's max_child_q: all children bad); the variance is unbiased, so a node with a single child never
  widens (the reference gets NaN there and does not widen).
- A widened child's prior is raw / (sum of the existing children's raw priors + raw), then smoothed with
  k+1 at the root; siblings keep their priors (the reference renormalises over k+1 candidates and only sets
  the new child's prior). Node.raw_prior (an extra field) keeps the unnormalised prior for this.
- Depth: a child gets parent.depth + 1, so the root of a fresh answer has depth -1.
- expand drops repeated token sets (first kept) before renormalising, as the reference's candidate lists do.

Virtual loss (cfg.parallel_leaves > 1, our extension): a selected path is marked in flight until its value is
backed up, and only the selection sees the marks: each in-flight visit reads as a visit backed up with
cfg.virtual_loss_value (effective n = n + in_flight, effective q = (q n + value in_flight) / (n + in_flight)).
n, fn, q and qmin/qmax are never touched, so best_child, the stopping rule, widening and the budget see the
real search, and a backup after release is the sequential backup. Without in-flight visits every number is
computed by the sequential expressions, so K = 1 is the paper's search bit for bit. An effective q is
normalised over the real qmin/qmax and clamped into [0, 1]: below the values seen it reads as the worst of
them (0), not as something worse than any real node; with at most one value seen it reads 0 below that value
and 0.5 otherwise, as a visited node does. (Under the fixed bounds (-1, 1) the clamp never binds.)
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from rain_core.config import RainConfig


def smooth_priors(priors: Sequence[float], eps: float) -> list[float]:
    """(1 - eps) p + eps / k, renormalised: every sibling keeps some exploration mass."""
    k = len(priors)
    if k == 0:
        return []
    mixed = [(1.0 - eps) * p + eps / k for p in priors]
    total = sum(mixed)
    return [p / total for p in mixed]


def _normalise(priors: Sequence[float]) -> list[float]:
    total = sum(priors)
    if not total > 0:  # long sequences can underflow to 0: fall back to uniform rather than divide by 0
        return [1.0 / len(priors)] * len(priors)
    return [p / total for p in priors]


def clip_greedy_prior(greedy: float, sampled: Sequence[float]) -> float:
    """Clip the greedy sequence's probability into [max + min, sum] of the sampled ones, so it neither
    swamps nor trails the alternatives. With one sample the bounds cross (2p > p): the lower bound wins,
    as in the reference (min with the sum first, then max with max + min)."""
    if not sampled:
        return greedy
    return max(min(greedy, sum(sampled)), max(sampled) + min(sampled))


@dataclass(eq=False)
class Node:
    tokens: tuple[int, ...]  # the token set this node adds to its parent's state
    prior: float
    depth: int  # answer depth of this set: 0 = first set of the answer; a fresh root has -1
    parent: Optional["Node"] = None
    children: list["Node"] = field(default_factory=list)
    n: float = 0.0  # real plus fractional (similarity) visits
    fn: int = 0  # real visits only
    q: float = 0.0
    embedding: Optional[torch.Tensor] = None  # running mean of its sentence embeddings (1-D float tensor)
    embedding_count: int = 0
    terminal: bool = False  # ends the answer (EOS / length limit): never expanded
    raw_prior: float = 0.0  # unnormalised prior as given to expand/add_child, to place widened siblings
    in_flight: int = 0  # selections through this node whose value is not backed up yet (virtual loss)

    def path_tokens(self, root: "Node") -> list[int]:
        """Tokens from just below `root` down to and including self."""
        sets: list[tuple[int, ...]] = []
        node: Optional[Node] = self
        while node is not root:
            if node is None:
                raise ValueError("root is not an ancestor of this node")
            sets.append(node.tokens)
            node = node.parent
        return [t for s in reversed(sets) for t in s]


class Tree:
    def __init__(self, root: Node, cfg: RainConfig):
        self.root = root
        self.cfg = cfg
        self.qmin, self.qmax = cfg.q_bounds if cfg.q_normalization == "fixed" else (math.inf, -math.inf)

    def size(self) -> int:
        count, stack = 0, [self.root]
        while stack:  # iterative: deep answers must not hit the recursion limit
            node = stack.pop()
            count += 1
            stack.extend(node.children)
        return count

    def effective_n(self, node: Node) -> float:
        """The visits the selection sees: real ones plus in-flight ones."""
        return node.n if node.in_flight == 0 else node.n + node.in_flight

    def effective_q(self, node: Node) -> float:
        """The value the selection sees: as if each in-flight visit had been backed up with the virtual loss."""
        if node.in_flight == 0:
            return node.q  # not q*n/n: K = 1 must reproduce the sequential search bit for bit
        return (node.q * node.n + self.cfg.virtual_loss_value * node.in_flight) / (node.n + node.in_flight)

    def normalized_q(self, node: Node) -> float:
        if node.in_flight:
            return self._normalized_effective_q(node)
        if node.n == 0:
            return 0.0
        if self.qmax <= self.qmin:  # at most one value seen (observed normalisation): neither good nor bad yet
            return 0.5
        return (node.q - self.qmin) / (self.qmax - self.qmin + self.cfg.q_norm_eps)

    def _normalized_effective_q(self, node: Node) -> float:
        """Q̂ of an in-flight node, clamped into [0, 1] because its effective q may lie outside the real
        qmin/qmax, which virtual loss never moves (module docstring)."""
        q = self.effective_q(node)
        if self.qmax <= self.qmin:  # at most one value seen (or none: qmin = inf)
            return 0.0 if q < self.qmin else 0.5
        return min(1.0, max(0.0, (q - self.qmin) / (self.qmax - self.qmin + self.cfg.q_norm_eps)))

    def puct_score(self, parent: Node, child: Node) -> float:
        u = self.cfg.c_puct * child.prior * math.sqrt(self.effective_n(parent)) / (1.0 + self.effective_n(child))
        return self.normalized_q(child) + u

    def select_child(self, node: Node) -> Node:
        """argmax of Q̂ + U; among equal scores the earliest child wins (max keeps the first maximum)."""
        if not node.children:
            raise ValueError("select_child on a leaf")
        return max(node.children, key=lambda c: self.puct_score(node, c))

    def _is_root(self, node: Node) -> bool:
        return node.parent is None

    def add_virtual_loss(self, path: Sequence[Node]) -> None:
        """Mark a selected path in flight: the root and every node of `path` (the selected nodes below the
        root down to the leaf, as the search collects them; empty when the leaf is the root; a leading root
        is accepted too) get one in-flight visit, so that the round's next selection sees them as losing."""
        for node in self._from_root(path):
            node.in_flight += 1

    def release(self, path: Sequence[Node]) -> None:
        """Undo exactly one add_virtual_loss(path); back the real value up with backup (either order)."""
        nodes = self._from_root(path)
        if any(node.in_flight == 0 for node in nodes):  # check first: a bad release must change nothing
            raise ValueError("release of a path that is not in flight")
        for node in nodes:
            node.in_flight -= 1

    def _from_root(self, path: Sequence[Node]) -> list[Node]:
        """The root followed by `path`, checked to be a chain of children from this tree's root."""
        nodes = list(path[1:]) if path and path[0] is self.root else list(path)
        parent = self.root
        for node in nodes:
            if node.parent is not parent:
                raise ValueError("path is not a chain of children from this tree's root")
            parent = node
        return [self.root, *nodes]

    def expand(self, node: Node, token_sets: Sequence[Sequence[int]], priors: Sequence[float],
               terminal: Sequence[bool]) -> list[Node]:
        if node.terminal:
            raise ValueError("terminal nodes are never expanded")
        if node.children:
            raise ValueError("node is already expanded; widen with add_child")
        if not len(token_sets) == len(priors) == len(terminal) or not token_sets:
            raise ValueError("token_sets, priors and terminal must be non-empty and of equal length")
        seen: set[tuple[int, ...]] = set()
        keep = []
        for i, ts in enumerate(token_sets):
            if tuple(ts) not in seen:
                seen.add(tuple(ts))
                keep.append(i)
        raw = [float(priors[i]) for i in keep]
        probs = _normalise(raw)
        if self._is_root(node):  # root noise so that the committed set is not decided by the prior alone
            probs = smooth_priors(probs, self.cfg.root_prior_smoothing)
        node.children = [Node(tuple(int(t) for t in token_sets[i]), p, node.depth + 1, parent=node,
                              terminal=bool(terminal[i]), raw_prior=r) for i, p, r in zip(keep, probs, raw)]
        return list(node.children)

    def backup(self, leaf: Node, value: float) -> list[Node]:
        path = [leaf]
        while path[-1] is not self.root:
            if path[-1].parent is None:
                raise ValueError("leaf is not in this tree")
            path.append(path[-1].parent)
        for node in path:
            node.n += 1
            node.fn += 1
            node.q += (value - node.q) / node.n  # n includes fractional visits, as the reference
            if node is not self.root:
                self.qmin = min(self.qmin, node.q)
                self.qmax = max(self.qmax, node.q)
        path.reverse()
        return path

    def update_similarity(self, path_nodes: Sequence[Node], embeddings: torch.Tensor, value: float) -> None:
        if len(path_nodes) != embeddings.shape[0]:
            raise ValueError("one embedding per path node")
        thr, weight = self.cfg.similarity_threshold, self.cfg.similarity_weight
        for node, emb in zip(path_nodes, embeddings):
            emb = emb.detach().reshape(-1).to(torch.float32)
            node.embedding_count += 1
            if node.embedding is None:
                node.embedding = emb.clone()  # own copy: the caller's batch tensor must not alias the tree
            else:
                node.embedding = node.embedding + (emb - node.embedding) / node.embedding_count
            if node.parent is None:
                continue
            sibs = [s for s in node.parent.children if s is not node and s.embedding is not None]
            if not sibs:
                continue
            others = torch.stack([s.embedding for s in sibs]).double()
            sims = F.cosine_similarity(others, node.embedding.double().unsqueeze(0), dim=1)
            hit = sims >= thr
            if not bool(hit.any()):
                continue
            w = weight * sims
            n = torch.tensor([s.n for s in sibs], dtype=torch.float64)
            q = torch.tensor([s.q for s in sibs], dtype=torch.float64)
            new_n = n + w
            new_q = (q * n + w * value) / new_n
            for i in hit.nonzero().flatten().tolist():
                sibs[i].n = float(new_n[i])
                sibs[i].q = float(new_q[i])

    def should_widen(self, node: Node) -> bool:
        kids = node.children
        if node.terminal or not 2 <= len(kids) < self.cfg.widen_max_children:
            return False
        if any(c.embedding is None for c in kids) or max(c.q for c in kids) >= 0:
            return False
        spread = torch.linalg.vector_norm(torch.var(torch.stack([c.embedding for c in kids]).double(), dim=0))
        return bool(spread < self.cfg.widen_variance_scale * self.cfg.set_size(node.depth + 1))

    def add_child(self, node: Node, tokens: Sequence[int], prior: float, terminal: bool) -> Node:
        """Widen `node` by one set. `prior` is raw, on the scale of the priors given to expand for this node
        (e.g. full-vocabulary probability, or the (clipped) sequence probability). An existing set is
        returned unchanged."""
        tokens = tuple(int(t) for t in tokens)
        for c in node.children:
            if c.tokens == tokens:
                return c
        if node.terminal:
            raise ValueError("terminal nodes are never expanded")
        k = len(node.children) + 1
        total = sum(c.raw_prior for c in node.children) + prior
        p = prior / total if total > 0 else 1.0 / k
        if self._is_root(node):
            eps = self.cfg.root_prior_smoothing
            p = (1.0 - eps) * p + eps / k
        child = Node(tokens, p, node.depth + 1, parent=node, terminal=terminal, raw_prior=float(prior))
        node.children.append(child)
        return child

    def best_child(self, node: Node) -> Node:
        if not node.children:
            raise ValueError("best_child of a leaf")
        return max(node.children, key=lambda c: (c.n, c.q))

    def should_stop_early(self) -> bool:
        if not self.root.children:
            return False
        best = self.best_child(self.root)
        return best.fn > self.cfg.min_visits and best.q > self.cfg.value_threshold

    def iterations_to_run(self) -> int:
        i0 = self.root.fn  # visits carried over by tree reuse count towards max_iters
        todo = max(self.cfg.max_iters, i0 + self.cfg.min_iters) - i0
        return todo if self.cfg.iteration_cap is None else min(todo, self.cfg.iteration_cap)

    def commit(self, child: Node) -> Node:
        if child.parent is not self.root:
            raise ValueError("can only commit a child of the root")
        if self.root.in_flight:  # every in-flight path holds the root: their values would be lost
            raise ValueError("commit while selections are in flight; release them first")
        child.parent = None  # the old root and the siblings become garbage; qmin/qmax carry over
        self.root = child
        for c, p in zip(child.children, smooth_priors([c.prior for c in child.children],
                                                      self.cfg.root_prior_smoothing)):
            c.prior = p
        return child
