"""Virtual loss in rain_core.search.tree (parallel leaves): hand-built trees, hand-computed numbers in the comments."""
import math

import pytest

from rain_core.config import RainConfig
from rain_core.search.tree import Node, Tree

CFG = RainConfig()
EPS = CFG.q_norm_eps  # 1e-5


def approx(x):
    return pytest.approx(x, rel=1e-12, abs=1e-12)


def kid(parent, tokens, prior=0.0, **kw):
    c = Node(tuple(tokens), prior, parent.depth + 1, parent=parent, **kw)
    parent.children.append(c)
    return c


def three_children(cfg=CFG):
    """root n = 4 (sqrt 2); a and b equally good (q 0.5, one visit), a with the larger prior; c unvisited."""
    root = Node((), 1.0, -1, n=4.0, fn=4, q=0.25)
    a = kid(root, [1], 0.5, n=1.0, fn=1, q=0.5)
    b = kid(root, [2], 0.3, n=1.0, fn=1, q=0.5)
    c = kid(root, [3], 0.2)
    return Tree(root, cfg), root, a, b, c


def scores(t, node):
    return [t.puct_score(node, c) for c in node.children]


def stats(t):
    nodes, stack = [], [t.root]
    while stack:
        node = stack.pop()
        nodes.append((node.tokens, node.n, node.fn, node.q, node.in_flight))
        stack.extend(node.children)
    return nodes, t.qmin, t.qmax


def test_defaults_are_the_sequential_search():
    assert (CFG.parallel_leaves, CFG.virtual_loss_value) == (1, -1.0)


def test_no_in_flight_visits_compute_the_sequential_expressions():
    t, root, a, b, c = three_children()
    for child in (a, b, c):  # == and not approx: K = 1 must be the paper's search bit for bit
        sequential_q = 0.0 if child.n == 0 else (child.q - t.qmin) / (t.qmax - t.qmin + EPS)
        assert t.normalized_q(child) == sequential_q
        assert t.puct_score(root, child) == sequential_q + CFG.c_puct * child.prior * math.sqrt(root.n) / (1.0 + child.n)
        assert (t.effective_n(child), t.effective_q(child)) == (child.n, child.q)
    d = kid(root, [4], 0.1, n=3.0, fn=3, q=0.1)
    assert t.effective_q(d) == 0.1  # the general formula would give (0.1*3 - 1*0)/(3 + 0) = 0.10000000000000002


def test_virtual_loss_sends_the_second_selection_elsewhere():
    t, root, a, b, c = three_children()
    # Q̂(a) = Q̂(b) = (0.5+1)/(2+1e-5) = 0.74999625; U = 2 p sqrt(4)/(1+n)
    assert scores(t, root) == [approx(1.5 / (2 + EPS) + 1.0),  # 1.74999625001875 (U = 2*0.5*2/2)
                               approx(1.5 / (2 + EPS) + 0.6),  # 1.34999625001875 (U = 2*0.3*2/2)
                               approx(0.8)]  # unvisited: 0 + 2*0.2*2/1
    assert t.select_child(root) is a
    t.add_virtual_loss([a])
    # root: n 5; a: n 2, q (0.5*1 - 1*1)/2 = -0.25, Q̂ = 0.75/(2+1e-5) = 0.374998125
    assert (t.effective_n(root), t.effective_n(a), t.effective_q(a)) == (5.0, 2.0, -0.25)
    assert t.normalized_q(a) == approx(0.75 / (2 + EPS))
    assert scores(t, root) == [approx(0.75 / (2 + EPS) + math.sqrt(5) / 3),  # 1.1203541175093048 (U = 2*0.5*sqrt5/3)
                               approx(1.5 / (2 + EPS) + 0.3 * math.sqrt(5)),  # 1.4208166432686868 (U = 2*0.3*sqrt5/2)
                               approx(0.4 * math.sqrt(5))]  # 0.894427190999916
    assert t.select_child(root) is b  # a lost 0.375 of Q̂ and 0.25 of U; b only gained sqrt(5/4) in U
    t.add_virtual_loss([b])
    # root n 6: a and b now both read q -0.25 over n 2, so the prior decides again
    assert scores(t, root) == [approx(0.75 / (2 + EPS) + math.sqrt(6) / 3),  # 1.1914947059371008
                               approx(0.75 / (2 + EPS) + 0.2 * math.sqrt(6)),  # 0.8648960735660105
                               approx(0.4 * math.sqrt(6))]  # 0.9797958971132712
    assert t.select_child(root) is a  # virtual loss discourages a repeat; it does not forbid one


def test_release_restores_every_score_bit_exactly():
    t, root, a, b, c = three_children()
    a1 = kid(a, [4], 0.6, n=1.0, fn=1, q=-0.5)
    a2 = kid(a, [5], 0.4)
    before = (scores(t, root), scores(t, a), stats(t))
    t.add_virtual_loss([a, a1])
    t.add_virtual_loss([c])
    t.add_virtual_loss([])  # the leaf is the root itself
    assert [n.in_flight for n in (root, a, a1, a2, b, c)] == [3, 1, 1, 0, 0, 1]
    assert scores(t, root) != before[0] and scores(t, a) != before[1]
    t.release([c])
    t.release([root, a, a1])  # a leading root is accepted, as backup returns paths
    t.release([])
    assert (scores(t, root), scores(t, a), stats(t)) == before


def test_in_flight_along_a_path_of_depth_three():
    t, root, a, b, c = three_children()
    a1 = kid(a, [4])
    a2 = kid(a1, [5])
    kid(a1, [6])
    t.add_virtual_loss([a, a1, a2])
    t.add_virtual_loss([a, a1])
    assert [n.in_flight for n in (root, a, a1, a2, b, c, a1.children[1])] == [2, 2, 2, 1, 0, 0, 0]
    # the leaf a2 is unvisited: n 0 + 1 in flight, q = (0*0 - 1*1)/1 = -1, Q̂ = (-1+1)/(2+1e-5) = 0
    assert (t.effective_n(a2), t.effective_q(a2), t.normalized_q(a2)) == (1.0, -1.0, 0.0)
    t.release([a, a1, a2])
    with pytest.raises(ValueError):
        t.release([a, a1, a2])  # a2 is no longer in flight ...
    assert [n.in_flight for n in (root, a, a1, a2)] == [1, 1, 1, 0]  # ... and nothing was released
    t.release([a, a1])
    assert root.in_flight == a.in_flight == a1.in_flight == 0
    with pytest.raises(ValueError):
        t.add_virtual_loss([a1])  # not a chain from the root
    with pytest.raises(ValueError):
        t.add_virtual_loss([a, a2])  # a2 is a grandchild of a
    assert root.in_flight == 0


def test_real_statistics_ignore_virtual_loss():
    t, root, a, b, c = three_children()
    a.n, a.fn, a.q = 7.0, 7, 0.9  # best child, and it stops the search: fn 7 > 6, q 0.9 > 0.8
    t.qmin, t.qmax = -0.3, 0.9
    before = stats(t)
    for _ in range(5):
        t.add_virtual_loss([a])  # the selection now reads a at q (6.3 - 5)/12 = 0.108 over n 12
    t.add_virtual_loss([b])
    assert t.best_child(root) is a and t.should_stop_early()
    assert t.iterations_to_run() == 46  # max(50, 4+15) - 4 with the root's real fn
    assert [(x[1], x[2], x[3]) for x in stats(t)[0]] == [(x[1], x[2], x[3]) for x in before[0]]
    assert (t.qmin, t.qmax) == (-0.3, 0.9)


def test_backup_after_release_is_the_sequential_backup():
    t, root, a, b, c = three_children()
    ref, *_ = three_children()
    # one round of K = 3: select, mark, select, mark ... then release each path and back its value up
    picked = []
    for _ in range(3):
        leaf = t.select_child(root)
        t.add_virtual_loss([leaf])
        picked.append(leaf)
    assert [p.tokens for p in picked] == [(1,), (2,), (1,)]
    for leaf, value in zip(picked[:2], (1.0, -1.0)):
        t.release([leaf])
        t.backup(leaf, value)
    t.backup(picked[2], 0.5)  # backup before release: virtual loss never touches n, q, qmin, qmax
    t.release([picked[2]])
    for tokens, value in (((1,), 1.0), ((2,), -1.0), ((1,), 0.5)):
        ref.backup(next(c for c in ref.root.children if c.tokens == tokens), value)
    assert stats(t) == stats(ref)  # == on floats: the same operations in the same order
    assert root.q == approx(3 / 14)  # 0.25 -> 0.25+0.75/5 = 0.4 -> 0.4-1.4/6 = 1/6 -> 1/6+(1/3)/7 = 3/14


def test_observed_bounds_clamp_the_effective_value():
    t = Tree(Node((), 1.0, -1, n=20.0), RainConfig(q_normalization="observed"))
    low = kid(t.root, [1], n=1.0, q=0.3, in_flight=1)  # effective q (0.3 - 1)/2 = -0.35
    mid = kid(t.root, [2], n=9.0, q=0.4, in_flight=1)  # effective q (3.6 - 1)/10 = 0.26
    assert t.normalized_q(low) == 0.0  # nothing seen yet (qmin = inf): below everything
    t.qmin, t.qmax = 0.3, 0.3  # one value seen
    assert t.normalized_q(low) == 0.0 and t.normalized_q(mid) == 0.0  # both below it
    t.qmin, t.qmax = 0.2, 0.4
    assert t.normalized_q(low) == 0.0  # unclamped (-0.35-0.2)/(0.2+1e-5) = -2.75
    assert t.normalized_q(mid) == approx(0.06 / (0.2 + EPS))  # 0.2999985000075, inside the bounds
    hopeful = Tree(t.root, RainConfig(q_normalization="observed", virtual_loss_value=1.0))
    hopeful.qmin, hopeful.qmax = 0.2, 0.4
    assert hopeful.normalized_q(mid) == 1.0  # (3.6 + 1)/10 = 0.46 > qmax: unclamped 1.29999
    hopeful.qmin = hopeful.qmax = 0.3
    assert hopeful.normalized_q(mid) == 0.5  # not below the one value seen: as a visited node reads


def test_commit_refuses_while_in_flight():
    t, root, a, b, c = three_children()
    t.add_virtual_loss([b])
    with pytest.raises(ValueError):
        t.commit(a)  # b's value would be backed up into a tree that no longer holds it
    t.release([b])
    assert t.commit(a) is a
