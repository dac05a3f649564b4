"""KV-cached model execution behind a small set of operations on named caches.

Every cache has batch size 1: branches that share a prefix (candidates, simulations, both option
orders of a self-evaluation) are appended to the same cache side by side and kept apart by a tree
attention mask (see `TreeLayout`). Nothing is ever copied per branch, and rewinding is a truncation.
The operations take and return plain tensors and ints so that `tp.py` can replay them on every rank.
"""
from __future__ import annotations

import copy
import threading
from dataclasses import dataclass, field
from typing import Optional

import torch
from transformers import DynamicCache

from rain_core.events import EngineLoad, Totals


class ModelRunner:
    """Owns the model and its caches. All tensors stay on the model's device."""

    def __init__(self, model, device: torch.device, judge: bool = False):
        """`judge`: this model only judges (a --judge-model): its work counts as the judge's."""
        self.model = model
        self.judge = judge
        self.load = EngineLoad()  # every forward a step of one row (this runner batches no requests)
        self._load_lock = threading.Lock()  # forwards count on the model thread, take_load reads on the worker's loop
        self.device = torch.device(device)
        self.caches: dict[int, DynamicCache] = {}
        self._next_handle = 0
        self.vocab_size = model.config.vocab_size
        self.max_positions = getattr(model.config, "max_position_embeddings", 2048)

    # cache bookkeeping -------------------------------------------------------------------------
    def new_cache(self) -> int:
        return self._register(DynamicCache(config=self.model.config))

    def clone_cache(self, handle: int) -> int:
        return self._register(copy.deepcopy(self.caches[handle]))

    def free_cache(self, handle: int) -> None:
        self.caches.pop(handle, None)

    def cache_length(self, handle: int) -> int:
        return self.caches[handle].get_seq_length()

    def truncate(self, handle: int, length: int) -> None:
        cache = self.caches[handle]
        extra = cache.get_seq_length() - length
        if extra > 0:
            cache.crop(-extra)

    def _register(self, cache: DynamicCache) -> int:
        self._next_handle += 1
        self.caches[self._next_handle] = cache
        return self._next_handle

    def take_load(self) -> EngineLoad:
        with self._load_lock:
            return self.load.take()

    # the one model operation ----------------------------------------------------------------------
    @torch.inference_mode()
    def forward(
        self,
        handle: int,
        input_ids: torch.Tensor,
        position_ids: Optional[torch.Tensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        logits_at: Optional[torch.Tensor] = None,
        totals: Optional[Totals] = None,
    ) -> torch.Tensor:
        """Feed `input_ids` [1, q] on top of cache `handle`; return float32 logits [k, vocab] of the
        query rows `logits_at` (default: the last row)."""
        input_ids = input_ids.to(self.device).view(1, -1)
        if logits_at is None:
            logits_at = torch.tensor([input_ids.shape[1] - 1], device=self.device)
        out = self.model(
            input_ids=input_ids,
            position_ids=None if position_ids is None else position_ids.to(self.device).view(1, -1),
            attention_mask=attention_mask,
            past_key_values=self.caches[handle],  # the name every transformers 5.x accepts (5.24 renames it `cache`)
            use_cache=True,
            logits_to_keep=logits_at.to(self.device),
        )
        if totals is not None:
            totals.count(input_ids.shape[1], judge=self.judge)
        with self._load_lock:
            self.load.steps += 1
            self.load.rows += 1
            self.load.tokens += input_ids.shape[1]
        return out.logits[0].float()


@dataclass
class TreeLayout:
    """Where each cache entry sits in the tree of branches grown on top of a shared prefix.

    Entry j carries a branch tag (-1: shared by every branch) and a position id. A branch may have a
    parent branch (`parents`): the tree of several paths, each with rows growing from its end. A query
    row of branch b sees entry j iff j is not after it and j is shared or belongs to b or to one of
    b's ancestors, so branches of any length can be fed side by side, several tokens each, in one
    forward call.
    """

    device: torch.device
    tags: list[int] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)
    parents: dict[int, int] = field(default_factory=dict)

    @classmethod
    def shared_prefix(cls, length: int, device) -> "TreeLayout":
        return cls(torch.device(device), [-1] * length, list(range(length)))

    def __len__(self) -> int:
        return len(self.tags)

    def truncate(self, length: int) -> None:
        del self.tags[length:], self.positions[length:]

    def lineage(self, branch: int) -> set[int]:
        """The tags a row of `branch` sees: its own, its ancestors' and the shared one."""
        seen = {branch, -1}
        while branch in self.parents:
            branch = self.parents[branch]
            seen.add(branch)
        return seen

    def next_position(self, branch: int) -> int:
        """Position id of the next token of `branch`: one after the last entry it sees."""
        lineage = self.lineage(branch)
        for tag, pos in zip(reversed(self.tags), reversed(self.positions)):
            if tag in lineage:
                return pos + 1
        return 0

    def add_sequences(self, sequences: list[list[int]], first_tag: int) -> "PrefixTree":
        """Lay out token sequences that all start after the shared part as one prefix tree: a prefix
        they have in common is one set of entries. Token node i is branch `first_tag - i`, its parent
        the node before it; the caller appends the tree's entries (and may hang rows below its ends)."""
        start = self.next_position(-1)
        tree = PrefixTree()
        nodes: dict[tuple[int, int], int] = {}  # (parent tag, token) -> tag
        for sequence in sequences:
            parent, last = -1, None
            for depth, token in enumerate(sequence):
                tag = nodes.get((parent, token))
                if tag is None:
                    tag = nodes[parent, token] = first_tag - len(nodes)
                    self.parents[tag] = parent
                    tree.ids.append(token)
                    tree.tags.append(tag)
                    tree.positions.append(start + depth)
                    tree.entry[tag] = len(tree.ids) - 1
                parent = tag
                last = tree.entry[tag]
            tree.last.append(last)
            tree.branch.append(parent)
        return tree

    def append(self, tags: list[int], positions: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Record new entries; return (position_ids [1, q], boolean mask [1, 1, q, total])."""
        start = len(self.tags)
        self.tags.extend(tags)
        self.positions.extend(positions)
        distinct = sorted(set(self.tags))
        index = {tag: i for i, tag in enumerate(distinct)}
        sees = torch.zeros(len(distinct), len(distinct), dtype=torch.bool)
        for tag in set(tags):
            for seen in self.lineage(tag):
                if seen in index:
                    sees[index[tag], index[seen]] = True
        sees = sees.to(self.device)
        key_tags = torch.tensor([index[t] for t in self.tags], device=self.device)
        keys = torch.arange(len(self.tags), device=self.device)
        queries = keys[start:].unsqueeze(1)
        visible = (keys.unsqueeze(0) <= queries) & sees[key_tags[start:]][:, key_tags]
        position_ids = torch.tensor(positions, device=self.device).unsqueeze(0)
        return position_ids, visible[None, None]


@dataclass
class PrefixTree:
    """Entries for token sequences laid out by `TreeLayout.add_sequences`, each distinct prefix once."""

    ids: list[int] = field(default_factory=list)
    tags: list[int] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)
    entry: dict[int, int] = field(default_factory=dict)  # a node's tag -> its index in the entries
    last: list[Optional[int]] = field(default_factory=list)  # per sequence: index of its last token (None: empty)
    branch: list[int] = field(default_factory=list)  # per sequence: its last node's tag (-1: empty)
