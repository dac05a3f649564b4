"""Hand-built trees with hand-computed numbers for rain_core.search.tree (arithmetic in the comments)."""
import math

import pytest
import torch

from rain_core.config import RainConfig
from rain_core.search.tree import Node, Tree, clip_greedy_prior, smooth_priors

CFG = RainConfig()
EPS = CFG.q_norm_eps  # 1e-5


def approx(x, rel=1e-12):
    return pytest.approx(x, rel=rel, abs=1e-12)


def kid(parent, tokens, prior=0.0, **kw):
    c = Node(tuple(tokens), prior, parent.depth + 1, parent=parent, **kw)
    parent.children.append(c)
    return c


def emb(*xs):
    return torch.tensor(xs, dtype=torch.float32)


# ---------------------------------------------------------------- PUCT and normalisation

def test_puct_scores_and_choice():
    root = Node((), 1.0, -1, n=4.0)  # sqrt(4) = 2
    a = kid(root, [1], 0.5)  # unvisited: Q̂ = 0, U = 2*0.5*2/(1+0) = 2.0
    b = kid(root, [2], 0.2, n=1.0, q=0.5)  # Q̂ = 1.5/(2+1e-5), U = 2*0.2*2/2 = 0.4
    c = kid(root, [3], 0.3, n=3.0, q=-0.5)  # Q̂ = 0.5/(2+1e-5), U = 2*0.3*2/4 = 0.3
    t = Tree(root, CFG)
    assert (t.qmin, t.qmax) == (-1.0, 1.0)
    assert t.puct_score(root, a) == approx(2.0)
    assert t.puct_score(root, b) == approx(1.5 / (2 + EPS) + 0.4)  # 1.14999625001875
    assert t.puct_score(root, c) == approx(0.5 / (2 + EPS) + 0.3)  # 0.54999875000625
    assert t.select_child(root) is a
    a.prior = 0.05  # U(a) = 2*0.05*2 = 0.2 < 1.1499...: the exploitation term now decides
    assert t.select_child(root) is b


def test_select_ties_keep_first_child():
    root = Node((), 1.0, -1, n=1.0)
    x, y = kid(root, [1], 0.5), kid(root, [2], 0.5)
    t = Tree(root, CFG)
    assert t.select_child(root) is x
    root.children.reverse()
    assert t.select_child(root) is y


def test_normalized_q_min_max():
    root = Node((), 1.0, -1)
    t = Tree(root, CFG)
    t.qmin, t.qmax = -0.5, 0.5
    visited = kid(root, [1], n=2.0, q=0.25)
    assert t.normalized_q(visited) == approx(0.75 / (1.0 + EPS))  # (0.25+0.5)/(0.5+0.5+1e-5) = 0.74999250007...
    assert t.normalized_q(kid(root, [2], q=0.7)) == 0.0  # n = 0: unvisited reads as 0 whatever q says
    fractional = kid(root, [3], n=0.19, q=-0.5)
    assert t.normalized_q(fractional) == 0.0  # (−0.5+0.5)/... = 0, and it is "visited" (n > 0)
    t.qmin = -1.0
    assert t.normalized_q(fractional) == approx(0.5 / (1.5 + EPS))


def test_observed_bounds_stretch_small_margins():
    root = Node((), 1.0, -1)
    t = Tree(root, RainConfig(q_normalization="observed"))
    a, b = kid(root, [1]), kid(root, [2])
    t.backup(a, 0.30)
    assert (t.qmin, t.qmax) == (0.30, 0.30)
    assert t.normalized_q(a) == 0.5  # one value seen: neither good nor bad yet
    assert t.normalized_q(b) == 0.0  # unvisited, as with fixed bounds
    t.backup(b, 0.40)  # a margin of 0.1 spans the whole [0, 1] (it is 0.05 with the paper's (-1, 1))
    assert t.normalized_q(a) == approx(0.0)
    assert t.normalized_q(b) == approx(0.1 / (0.1 + EPS))


# ---------------------------------------------------------------- backup

def test_backup_running_means_and_path():
    root = Node((), 1.0, -1, n=2.0, fn=2, q=0.5)
    a = kid(root, [1], n=1.0, fn=1, q=0.0)
    b = kid(a, [2])
    t = Tree(root, CFG)
    t.qmin, t.qmax = -0.2, 0.2
    assert t.backup(b, 1.0) == [root, a, b]
    assert (b.n, b.fn, b.q) == (1.0, 1, 1.0)  # 0 + (1-0)/1
    assert (a.n, a.fn, a.q) == (2.0, 2, 0.5)  # 0 + (1-0)/2
    assert (root.n, root.fn) == (3.0, 3) and root.q == approx(2 / 3)  # 0.5 + (1-0.5)/3
    assert (t.qmin, t.qmax) == (-0.2, 1.0)  # qmax <- b.q = 1.0


def test_backup_extremes_skip_root_and_count_fractional_visits():
    root = Node((), 1.0, -1, n=9.0, fn=9, q=-0.9)
    a = kid(root, [1])
    frac = kid(root, [2], n=0.19, q=1.0)  # only similarity visits so far
    t = Tree(root, CFG)
    t.qmin, t.qmax = 0.0, 0.1
    t.backup(a, -0.5)
    assert root.q == approx(-0.86)  # -0.9 + (-0.5+0.9)/10; below qmin but the root does not count
    assert (t.qmin, t.qmax) == (-0.5, 0.1)  # a.q = -0.5
    t.backup(frac, -1.0)
    assert (frac.n, frac.fn) == (pytest.approx(1.19), 1)
    assert frac.q == approx(1 + (-1 - 1) / 1.19)  # -0.680672268907563: divides by n = 1.19, not fn
    assert t.qmin == approx(-0.680672268907563)
    with pytest.raises(ValueError):
        t.backup(Node((), 1.0, 0), 0.0)  # not in this tree


# ---------------------------------------------------------------- similarity update

def test_similarity_update_siblings():
    root = Node((), 1.0, -1)
    a = kid(root, [1], n=1.0, fn=1, q=0.3, embedding=emb(1, 0), embedding_count=1)
    b = kid(root, [2], n=2.0, q=0.5, embedding=emb(1, 0))
    c = kid(root, [3], n=1.0, q=0.4, embedding=emb(0, 1))
    d = kid(root, [4], n=1.0, q=0.4)  # no embedding: skipped
    e = kid(root, [5], n=1.0, q=0.4, embedding=emb(1, 0.7))
    f = kid(root, [6], embedding=emb(2, 0))  # n = 0: takes the value outright
    t = Tree(root, CFG)
    t.update_similarity([a], emb(1, 0.6).unsqueeze(0), -1.0)
    # a's mean: [1,0] + ([1,0.6]-[1,0])/2 = [1,0.3]; its own n/q untouched
    assert a.embedding_count == 2 and torch.allclose(a.embedding, emb(1, 0.3))
    assert (a.n, a.q) == (1.0, 0.3)
    s = 1 / math.sqrt(1.09)  # cos([1,0.3],[1,0]) = 1/sqrt(1.09) = 0.95782628... >= 0.95
    w = 0.2 * s  # 0.19156525704
    assert b.n == approx(2 + w, 1e-6)  # 2.19156525704
    assert b.q == approx((0.5 * 2 + w * -1.0) / (2 + w), 1e-6)  # 0.80843474/2.19156526 = 0.36888463182
    assert (f.n, f.q) == (approx(w, 1e-6), approx(-1.0, 1e-6))  # (0*0 + w*(-1))/(0 + w); scale-invariant cosine
    assert (c.n, c.q) == (1.0, 0.4)  # cos = 0.3/sqrt(1.09) = 0.287
    assert (e.n, e.q) == (1.0, 0.4)  # cos = 1.21/sqrt(1.09*1.49) = 0.94947 < 0.95
    assert (d.n, d.q, d.embedding) == (1.0, 0.4, None)
    assert (t.qmin, t.qmax) == (-1.0, 1.0)


def test_similarity_update_every_level_and_copies_embedding():
    root = Node((), 1.0, -1)
    a = kid(root, [1])
    a1 = kid(a, [2])
    a2 = kid(a, [3], n=1.0, q=0.0, embedding=emb(0, 1))
    lone = kid(root, [4], n=1.0, q=0.0, embedding=emb(0, 1))  # cos([1,0],[0,1]) = 0: untouched
    batch = torch.stack([emb(1, 0), emb(0, 2)])
    Tree(root, CFG).update_similarity([a, a1], batch, -1.0)
    assert a.embedding_count == 1 and torch.equal(a.embedding, emb(1, 0))
    batch.zero_()  # the tree keeps its own copy
    assert torch.equal(a1.embedding, emb(0, 2))
    # cos([0,2],[0,1]) = 1: w = 0.2, q = (0*1 + 0.2*(-1))/1.2 = -1/6, n = 1.2
    assert a2.n == approx(1.2) and a2.q == approx(-1 / 6)
    assert (lone.n, lone.q) == (1.0, 0.0)


# ---------------------------------------------------------------- widening

def widen_case(depth, ys, qs):
    node = Node((7,), 1.0, depth, parent=Node((), 1.0, depth - 1))
    for i, (y, q) in enumerate(zip(ys, qs)):
        kid(node, [i], 0.1, n=1.0, fn=1, q=q, embedding=None if y is None else emb(1, y))
    return node


def test_widen_trigger():
    t = Tree(Node((), 1.0, -1), CFG)
    bad = [-0.5, -0.2, -0.1]
    # dim 0 constant; dim 1 = 0, 0.2, 0.4: unbiased var = (0.04+0+0.04)/2 = 0.04, norm 0.04
    # node depth 0 -> children depth 1 -> L = 2 -> 0.03*2 = 0.06 > 0.04: widen
    assert t.should_widen(widen_case(0, [0, 0.2, 0.4], bad))
    # children depth 0 -> L = 1 -> 0.03 < 0.04 (a biased variance, 0.08/3 = 0.0267, would wrongly widen)
    assert not t.should_widen(widen_case(-1, [0, 0.2, 0.4], bad))
    # dim 1 = 0, 0.3, 0.6: var 0.09 > 0.06 at L = 2, but < 0.03*10 = 0.3 at children depth 3 (L = 10)
    assert not t.should_widen(widen_case(0, [0, 0.3, 0.6], bad))
    assert t.should_widen(widen_case(2, [0, 0.3, 0.6], bad))
    assert not t.should_widen(widen_case(0, [0, 0.2, 0.4], [-0.5, 0.0, -0.1]))  # max q = 0 is not < 0
    assert not t.should_widen(widen_case(0, [0, 0.2, None], bad))  # a child without an embedding
    assert not t.should_widen(widen_case(0, [0], [-0.5]))  # one child: variance undefined
    assert not t.should_widen(widen_case(0, [0] * 20, [-0.5] * 20))  # at widen_max_children
    assert t.should_widen(widen_case(0, [0] * 19, [-0.5] * 19))
    assert not t.should_widen(widen_case(0, [], []))


def test_add_child_priors():
    parent = Node((), 1.0, -1)
    inner = kid(parent, [9])
    t = Tree(parent, CFG)
    t.expand(inner, [(1,), (2,)], [0.4, 0.3], [False, False])  # priors 4/7, 3/7
    new = t.add_child(inner, [5], 0.1, True)
    assert new.prior == approx(0.125)  # 0.1/(0.4+0.3+0.1)
    assert [c.prior for c in inner.children[:2]] == [approx(4 / 7), approx(3 / 7)]  # untouched
    assert (new.depth, new.parent, new.terminal, new.tokens) == (1, inner, True, (5,))
    assert t.add_child(inner, (5,), 0.9, False) is new and len(inner.children) == 3  # duplicate: no-op
    root_node = Node((), 1.0, -1)
    rt = Tree(root_node, CFG)
    rt.expand(root_node, [(1,), (2,)], [0.4, 0.3], [False, False])
    # root: 0.75*0.125 + 0.25/3 = 0.09375 + 0.0833333 = 0.1770833333
    assert rt.add_child(root_node, [5], 0.1, False).prior == approx(0.17708333333333331)


# ---------------------------------------------------------------- expand

def test_expand_normalises_and_smooths_at_root():
    root = Node((), 1.0, -1)
    t = Tree(root, CFG)
    kids = t.expand(root, [(5,), (6,), (7,)], [2.0, 1.0, 1.0], [False, True, False])
    # normalised 0.5, 0.25, 0.25; root: 0.75p + 0.25/3 -> 0.4583333, 0.2708333, 0.2708333
    assert [c.prior for c in kids] == [approx(0.4583333333333333), approx(0.2708333333333333),
                                       approx(0.2708333333333333)]
    assert [c.terminal for c in kids] == [False, True, False]
    assert all(c.parent is root and c.depth == 0 for c in kids) and root.children == kids
    grand = t.expand(kids[0], [(1, 2), (3, 4), (1, 2)], [2.0, 2.0, 4.0], [False] * 3)
    assert [c.tokens for c in grand] == [(1, 2), (3, 4)]  # repeat dropped, first kept
    assert [c.prior for c in grand] == [0.5, 0.5]  # not the root: no smoothing
    assert all(c.depth == 1 for c in grand) and t.size() == 6
    assert grand[1].path_tokens(root) == [5, 3, 4] and grand[1].path_tokens(kids[0]) == [3, 4]
    with pytest.raises(ValueError):
        grand[1].path_tokens(kids[1])
    with pytest.raises(ValueError):
        t.expand(kids[1], [(1,)], [1.0], [False])  # terminal
    with pytest.raises(ValueError):
        t.expand(root, [(1,)], [1.0], [False])  # already expanded


def test_smooth_priors_and_greedy_clip():
    assert smooth_priors([0.6, 0.4], 0.25) == [approx(0.575), approx(0.425)]  # 0.45+0.125, 0.3+0.125
    s = [0.1, 0.2, 0.05]  # sum 0.35, max+min 0.25
    assert clip_greedy_prior(0.5, s) == approx(0.35)
    assert clip_greedy_prior(0.01, s) == approx(0.25)
    assert clip_greedy_prior(0.3, s) == 0.3
    assert clip_greedy_prior(0.1, [0.2]) == approx(0.4)  # bounds cross [0.4, 0.2]: lower bound wins
    assert clip_greedy_prior(0.7, []) == 0.7


# ---------------------------------------------------------------- commit, stopping, budget

def test_commit_reroots_and_resmooths():
    root = Node((), 1.0, -1, n=10.0, fn=10)
    a = kid(root, [4, 5], n=8.0, fn=7, q=0.2)
    b = kid(root, [6])
    a1, a2, a3 = (kid(a, [i], p) for i, p in ((1, 0.6), (2, 0.3), (3, 0.1)))
    kid(a1, [8])
    t = Tree(root, CFG)
    t.qmin, t.qmax = -0.7, 0.9
    assert t.size() == 7
    assert t.commit(a) is a and t.root is a and a.parent is None
    # 0.75*[0.6,0.3,0.1] + 0.25/3 = [0.533333, 0.308333, 0.158333], sums to 1
    assert [c.prior for c in (a1, a2, a3)] == [approx(0.5333333333333333), approx(0.3083333333333333),
                                               approx(0.15833333333333333)]
    assert (t.qmin, t.qmax, a.n, a.fn, a.q) == (-0.7, 0.9, 8.0, 7, 0.2) and t.size() == 5
    assert a1.children[0].path_tokens(t.root) == [1, 8]
    with pytest.raises(ValueError):
        t.commit(b)
    # after widening priors need not sum to 1: [0.5,0.25,0.125] -> [0.458333,0.270833,0.177083] / 0.90625
    a1.prior, a2.prior, a3.prior = 0.5, 0.25, 0.125
    a.parent = Node((), 1.0, -2, children=[a])  # hang a under a fresh root to commit it once more
    Tree(a.parent, CFG).commit(a)
    assert [c.prior for c in (a1, a2, a3)] == [approx(0.5057471264367815), approx(0.29885057471264365),
                                               approx(0.1954022988505747)]


def test_best_child_and_stopping_rule():
    root = Node((), 1.0, -1)
    t = Tree(root, CFG)
    assert not t.should_stop_early()  # no children yet
    x = kid(root, [1], n=7.0, fn=7, q=0.9)
    kid(root, [2], n=3.0, fn=3, q=1.0)
    assert t.best_child(root) is x and t.should_stop_early()  # fn 7 > 6 and q 0.9 > 0.8
    x.fn = 6
    assert not t.should_stop_early()  # fn must exceed min_visits
    x.fn, x.q = 7, 0.8
    assert not t.should_stop_early()  # q must exceed value_threshold
    y = kid(root, [3], n=7.2, fn=6, q=0.95)  # fractional visits make y the most visited
    assert t.best_child(root) is y and not t.should_stop_early()  # ... but its real visits are 6
    y.n, x.q = 7.0, 0.5
    assert t.best_child(root) is y  # n tie 7 = 7: higher q (0.95 > 0.5)
    x.q = 0.95
    assert t.best_child(root) is x  # full tie: earliest child
    strict = Tree(root, CFG.with_overrides(min_visits=16))
    assert not strict.should_stop_early()


def test_iterations_to_run():
    root = Node((), 1.0, -1)
    assert Tree(root, CFG).iterations_to_run() == 50  # max(50, 0+15) - 0
    root.fn = 10
    assert Tree(root, CFG).iterations_to_run() == 40  # max(50, 25) - 10
    root.fn = 40
    assert Tree(root, CFG).iterations_to_run() == 15  # max(50, 55) - 40: the floor of new iterations
    root.fn = 80
    assert Tree(root, CFG).iterations_to_run() == 15  # max(50, 95) - 80
    capped = CFG.with_overrides(iteration_cap=20)
    root.fn = 10
    assert Tree(root, capped).iterations_to_run() == 20  # min(40, 20)
    root.fn = 40
    assert Tree(root, capped).iterations_to_run() == 15  # min(15, 20)


def test_one_full_iteration_by_hand():
    root = Node((), 1.0, -1)
    t = Tree(root, CFG)
    t.backup(root, 0.0)  # first iteration evaluates the bare root: n = 1, q = 0
    a, b = t.expand(root, [(1,), (2,)], [0.75, 0.25], [False, False])
    # priors 0.75*0.75+0.125 = 0.6875, 0.75*0.25+0.125 = 0.3125; U = 2*p*1/1
    assert t.select_child(root) is a
    assert t.backup(a, -1.0) == [root, a]  # a.q = -1, root.q = 0 + (-1-0)/2 = -0.5
    # now Q̂(a) = 0/(2+1e-5) = 0, U(a) = 2*0.6875*sqrt(2)/2 = 0.97227; U(b) = 2*0.3125*sqrt(2) = 0.88388
    assert t.puct_score(root, a) == approx(0.6875 * math.sqrt(2))
    assert t.puct_score(root, b) == approx(0.625 * math.sqrt(2))
    assert t.select_child(root) is a
    t.backup(a, -1.0)  # U(a) = 2*0.6875*sqrt(3)/3 = 0.7939 < U(b) = 0.625*sqrt(3) = 1.0825
    assert t.select_child(root) is b
