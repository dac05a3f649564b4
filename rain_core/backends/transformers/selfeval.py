"""Self-evaluation on the transformers backend: the judge's prompt (rain_core/search/judge_prompt.py) on a KV cache.

The fixed part is fed once per model and kept as a prefix cache; each request clones it and adds its
conversation; each evaluated answer only feeds the tokens that differ from the previous one, and both
option orders ride in the same forward call as two branches.
"""
from __future__ import annotations

from typing import Optional

import torch

from rain_core.backends.transformers.runner import ModelRunner, TreeLayout
from rain_core.chat.template import text_ids
from rain_core.config import EvaluatorConfig
from rain_core.events import Totals
from rain_core.search.judge_prompt import verdict_memo, common_prefix, answer_ids, build_layout, combine, render_conversation
from rain_core.search.ops import Verdict

ANSWER_TAG = -2  # answers judged together are branches ANSWER_TAG, ANSWER_TAG - 1, ...; their option orders 0, 1, ...


class SelfEvaluator:
    """One evaluation format on one model; owns the cache of its fixed prefix."""

    def __init__(self, runner: ModelRunner, tokenizer, cfg: EvaluatorConfig):
        self.runner, self.tokenizer, self.cfg = runner, tokenizer, cfg
        self.layout = build_layout(tokenizer, cfg)
        self.prefix_cache = runner.new_cache()
        runner.forward(self.prefix_cache, torch.tensor(self.layout.fixed))

    def close(self) -> None:
        self.runner.free_cache(self.prefix_cache)

    def session(self, messages, totals: Optional[Totals] = None) -> "EvalSession":
        return EvalSession(self, messages, totals)


class EvalSession:
    """Evaluations of many answers to one conversation, sharing everything up to where they differ."""

    def __init__(self, evaluator: SelfEvaluator, messages, totals: Optional[Totals]):
        self.ev, self.runner, self.totals = evaluator, evaluator.runner, totals
        self.cache = self.runner.clone_cache(evaluator.prefix_cache)
        self.base = list(evaluator.layout.fixed)
        self.fed = list(self.base)  # ids currently in self.cache
        conversation = render_conversation(messages, evaluator.layout.truthful)
        self.conversation_ids = text_ids(evaluator.tokenizer, conversation)
        self.verdicts = verdict_memo()

    def close(self) -> None:
        self.runner.free_cache(self.cache)

    def evaluate(self, answer_text: str) -> Verdict:
        return self.evaluate_all([answer_text])[0]

    def evaluate_all(self, answer_texts: list[str]) -> list[Verdict]:
        """Verdicts on several answers; those not judged before are judged in one forward call."""
        new = [text for text in dict.fromkeys(answer_texts) if self.verdicts.get(text) is None]
        if new:
            for text, result in zip(new, self._run(new)):
                self.verdicts.put(text, result)
            if self.totals is not None:
                self.totals.self_evaluations += len(new)
        return [self.verdicts.get(text) for text in answer_texts]

    def _run(self, answer_texts: list[str]) -> list[Verdict]:
        """The answers are fed side by side as one prefix tree on top of what the cache holds, each
        option order a branch below its answer; the part they all share stays cached for the next
        evaluation, which likely extends it."""
        targets = [self.base + self.conversation_ids + answer_ids(self.ev.tokenizer, t) for t in answer_texts]
        keep = common_prefix(self.fed, *targets)
        self.runner.truncate(self.cache, keep)
        layout = TreeLayout.shared_prefix(keep, self.runner.device)
        shared, suffixes = self._split_suffixes()
        tree = layout.add_sequences([target[keep:] + shared for target in targets], ANSWER_TAG)
        ids, tags, positions, last_rows = list(tree.ids), list(tree.tags), list(tree.positions), []
        for answer, target in enumerate(targets):
            start = len(target) + len(shared)
            for order, suffix in enumerate(suffixes):
                tag = answer * len(suffixes) + order
                layout.parents[tag] = tree.branch[answer]
                ids += suffix
                tags += [tag] * len(suffix)
                positions += range(start, start + len(suffix))
                last_rows.append(len(tags) - 1)
        position_ids, mask = layout.append(tags, positions)
        logits = self.runner.forward(
            self.cache, torch.tensor(ids), position_ids, mask, torch.tensor(last_rows), totals=self.totals
        )
        self.fed = targets[0][: common_prefix(*targets)]
        self.runner.truncate(self.cache, len(self.fed))
        logprobs = torch.log_softmax(logits, dim=-1)
        options = torch.tensor(self.ev.layout.options, device=logprobs.device).repeat(len(targets), 1)
        rows = torch.arange(len(last_rows), device=logprobs.device)
        log_odds = (logprobs[rows, options[:, 0]] - logprobs[rows, options[:, 1]]).view(len(targets), -1).tolist()
        return [Verdict(combine(lo, self.ev.cfg.score), lo) for lo in log_odds]

    def _split_suffixes(self) -> tuple[list[int], list[list[int]]]:
        n = self.ev.layout.shared_suffix
        return self.ev.layout.suffixes[0][:n], [s[n:] for s in self.ev.layout.suffixes]
