"""The reference backend: one request's operations, executed in order on a KV cache of the model.

The state (prompt plus committed sets) lives in one cache that only grows. An operation on a path
feeds the path on top of it, works there (candidate and simulation rows side by side as branches of
the same cache) and truncates it back, so every operation starts from the committed state and a
seeded request is reproducible whatever ran before it. The logits at the last few states are kept,
so asking for the distribution at the state a `Grow` just started from costs nothing.

The operations of one wave of the search (`run_all`) share their model calls: the leaves' paths are
fed side by side as one prefix tree, their rows grow below them in one decode loop, and their
answers are judged in one forward call. A single operation runs exactly as it always has.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Optional

import torch

from ..branches import Branch, ends_with_any, grow_branches
from ..events import TokenLogprob, Totals
from ..logprobs import maybe_logprobs
from ..ops import OPERATIONS, Append, Decode, Decoded, Embed, Grow, Judge, Op, Ranked, Result, TopTokens
from ..runner import TreeLayout
from ..sampling import sample
from ..selfeval import SelfEvalResult

STATE_LOGITS_KEPT = 32  # paths whose next-token logits stay at hand until the next commit (two waves of 16)
PATH_TAG = -2  # a wave's paths are branches PATH_TAG, PATH_TAG - 1, ... of the cache; the rows below them 0, 1, ...


class TransformersSession:
    def __init__(self, engine, request, state: list[int], generator: torch.Generator, totals: Totals,
                 committed: list[int]):
        """`state`: the ids fed before the first operation (prompt plus a resumed answer's ids);
        `committed`: the answer's ids so far, whose text ends a clause or not."""
        self.engine, self.request, self.totals = engine, request, totals
        self.runner, self.generator = engine.runner, generator
        self.committed = list(committed)
        self.cache = self.runner.new_cache()
        self._evaluation = None
        self._pending: Optional[int] = None  # a decoded token not fed yet: fed when the state is next needed
        self.root_logits = self.runner.forward(self.cache, torch.tensor(state), totals=totals)[-1]
        self.committed_len = len(state)
        self._state_logits: OrderedDict[tuple[int, ...], torch.Tensor] = OrderedDict()

    def close(self) -> None:
        self.runner.free_cache(self.cache)
        if self._evaluation is not None:
            self._evaluation.close()

    def run(self, op: Op) -> Result:
        return self.run_all([op])[0]

    def run_all(self, ops: list[Op]) -> list[Result]:
        """Several operations at once (the leaves of one wave of the search): each kind runs as one
        batch, so a wave's leaves share their model calls. One operation runs exactly as alone."""
        strays = [op for op in ops if not isinstance(op, OPERATIONS)]
        if strays:
            raise TypeError(f"not a model operation: {strays[0]!r}")
        results: list[Result] = [None] * len(ops)
        for kind, execute in self._executors():
            at = [i for i, op in enumerate(ops) if isinstance(op, kind)]
            if at:
                for i, result in zip(at, execute([ops[i] for i in at])):
                    results[i] = result
        return results

    def _executors(self):
        return ((TopTokens, self._top_tokens_all), (Grow, self._grow_all), (Judge, self._judge_all),
                (Embed, self._embed_all), (Append, lambda ops: [self._append(op) for op in ops]),
                (Decode, lambda ops: [self._decode(op) for op in ops]))

    # operations --------------------------------------------------------------------------------
    def _top_tokens_all(self, ops: list[TopTokens]) -> list[Ranked]:
        ranked = []
        for op, row in zip(ops, self._logits_at_all([op.path for op in ops])):
            probs, ids = torch.softmax(row, -1).topk(op.k)
            ranked.append(Ranked(ids.tolist(), probs.tolist()))
        return ranked

    def _grow_all(self, ops: list[Grow]) -> list[list[Branch]]:
        specs = [spec for op in ops for spec in op.rows]
        leaf_of = [k for k, op in enumerate(ops) for _ in op.rows]
        if not specs:
            return [[] for _ in ops]
        try:
            if len(ops) == 1:  # the reference order: the path joins the shared state
                starts = self._feed_path(ops[0].path).view(1, -1)
                layout = TreeLayout.shared_prefix(self.runner.cache_length(self.cache), self.runner.device)
            else:  # every path a branch of its own, every row a branch below its path's
                layout, path_branches, path_logits = self._feed_paths([op.path for op in ops])
                starts = path_logits[leaf_of]
                layout.parents.update({row: path_branches[k] for row, k in enumerate(leaf_of)})
            before = [self.committed + list(op.path) for op in ops]
            branches = grow_branches(
                self.runner, self.cache, layout, starts, specs, self.generator, self.engine.end_ids,
                lambda row, ids, chars: ends_with_any(self.engine.tokenizer, before[leaf_of[row]] + ids, chars),
                self.totals)
        finally:
            self.runner.truncate(self.cache, self.committed_len)
        rows = iter(branches)
        return [[next(rows) for _ in op.rows] for op in ops]

    def _judge_all(self, ops: list[Judge]) -> list[SelfEvalResult]:
        if self._evaluation is None:
            rain = self.request.rain
            self._evaluation = self.engine.evaluator(rain.evaluator, rain.judge).session(self.request.messages,
                                                                                         self.totals)
        return self._evaluation.evaluate_all([op.answer for op in ops])

    def _embed_all(self, ops: list[Embed]) -> list[torch.Tensor]:
        return self.engine.embedder.embed_groups([op.texts for op in ops])

    def _append(self, op: Append) -> Optional[list[TokenLogprob]]:
        self._flush_pending()
        self.runner.truncate(self.cache, self.committed_len)
        tokens = list(op.tokens)
        logits = self.runner.forward(self.cache, torch.tensor(tokens), logits_at=torch.arange(len(tokens)),
                                     totals=self.totals)
        # row i of the set's forward predicts token i + 1; the first token was drawn at the old state
        logprobs = maybe_logprobs(torch.cat([self.root_logits.view(1, -1), logits[:-1]]), tokens, op.top_logprobs)
        self.root_logits = logits[-1]
        self.committed_len += len(tokens)
        self.committed.extend(tokens)
        self._state_logits.clear()
        return logprobs

    def _decode(self, op: Decode) -> Decoded:
        self._flush_pending()
        logits = self.root_logits
        token = int(sample(logits, self.generator, op.temperature, top_p=op.top_p))
        self._pending = token
        return Decoded(token, maybe_logprobs(logits.view(1, -1), [token], op.top_logprobs))

    # the state ---------------------------------------------------------------------------------
    def _flush_pending(self) -> None:
        if self._pending is not None:
            token, self._pending = self._pending, None
            self.root_logits = self.runner.forward(self.cache, torch.tensor([[token]]), totals=self.totals).view(-1)
            self.committed_len += 1
            self.committed.append(token)

    def _logits_at_all(self, paths: list[tuple[int, ...]]) -> list[torch.Tensor]:
        """Next-token logits after the state plus each path; the paths not at hand are fed together
        (and truncated back)."""
        missing = [p for p in dict.fromkeys(paths) if p and p not in self._state_logits]
        if len(missing) > 1:
            try:
                self._feed_paths(missing)
            finally:
                self.runner.truncate(self.cache, self.committed_len)
        return [self._logits_at(p) for p in paths]

    def _logits_at(self, path: tuple[int, ...]) -> torch.Tensor:
        """Next-token logits after the state plus `path`, fed (and truncated back) unless at hand."""
        if not path:
            return self.root_logits
        if path in self._state_logits:
            return self._state_logits[path]
        try:
            return self._feed_path(path)
        finally:
            self.runner.truncate(self.cache, self.committed_len)

    def _feed_path(self, path: tuple[int, ...]) -> torch.Tensor:
        """Feed `path` on top of the state, leaving it in the cache; its next-token logits."""
        self._flush_pending()
        if not path:
            return self.root_logits
        logits = self.runner.forward(self.cache, torch.tensor(path), totals=self.totals)[-1]
        self._keep_state_logits(path, logits)
        return logits

    def _feed_paths(self, paths: list[tuple[int, ...]]) -> tuple[TreeLayout, list[int], torch.Tensor]:
        """Feed every path on top of the state in one forward call, as one prefix tree (siblings feed
        their parents' tokens once), leaving them in the cache: the layout, each path's branch there
        (-1 for an empty path) and the logits at each path's end [paths, vocab]."""
        self._flush_pending()
        layout = TreeLayout.shared_prefix(self.committed_len, self.runner.device)
        tree = layout.add_sequences([list(p) for p in paths], PATH_TAG)
        logits = [self.root_logits] * len(paths)
        fed = [k for k, last in enumerate(tree.last) if last is not None]
        if fed:
            position_ids, mask = layout.append(tree.tags, tree.positions)
            out = self.runner.forward(self.cache, torch.tensor(tree.ids), position_ids, mask,
                                      torch.tensor([tree.last[k] for k in fed]), totals=self.totals)
            for k, row in zip(fed, out):
                logits[k] = row
                self._keep_state_logits(paths[k], row)
        return layout, tree.branch, torch.stack(logits)

    def _keep_state_logits(self, path: tuple[int, ...], logits: torch.Tensor) -> None:
        self._state_logits[path] = logits
        if len(self._state_logits) > STATE_LOGITS_KEPT:
            self._state_logits.popitem(last=False)
