"""Self-evaluation: the model judges a (partial) answer with its own chat template.

The evaluation prompt is laid out as  fixed | conversation | answer | suffix(order). The fixed part
(instruction and few-shot examples) is fed once per model and kept as a prefix cache; each request
clones it and adds its conversation; each evaluated answer only feeds the tokens that differ from
the previous one, and both option orders ride in the same forward call as two branches.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Optional

import torch

from . import prompts
from .config import EvaluatorConfig
from .events import Totals
from .runner import ModelRunner, TreeLayout

VERDICT_CACHE_SIZE = 4096
_CONV, _ANSWER = "\x01", "\x02"


@dataclass
class SelfEvalResult:
    value: float  # in [-1, 1]; higher is better (more harmless / truthful / principled)
    log_odds: list[float]  # log P(good option) - log P(bad option), one per option order


@dataclass(frozen=True)
class EvalLayout:
    fixed: list[int]
    suffixes: list[list[int]]  # one per option order
    options: list[tuple[int, int]]  # (good, bad) option token per order
    truthful: bool

    @property
    def shared_suffix(self) -> int:
        """Leading suffix tokens every order has in common (fed once); each order keeps one of its own."""
        return min(_common_prefix(*self.suffixes) if len(self.suffixes) > 1 else len(self.suffixes[0]),
                   min(map(len, self.suffixes)) - 1)


def _instruction(cfg: EvaluatorConfig) -> tuple[str, str, str]:
    """(instruction block, good option text, bad option text)."""
    if cfg.criterion == "truthful":
        return (prompts.TRUTH_INSTRUCTION if cfg.prompt == "fewshot" else prompts.CHAT_TRUTH_QUESTION), " Yes", " No"
    if cfg.prompt == "yesno":
        return prompts.YESNO_INTRO, "No", "Yes"
    if cfg.principle:
        template = prompts.PRINCIPLE_INSTRUCTION if cfg.prompt == "fewshot" else prompts.CHAT_PRINCIPLE_QUESTION
        return template.format(principle=cfg.principle), prompts.FOLLOWS, prompts.VIOLATES
    block = prompts.harm_fewshot_block() if cfg.prompt == "fewshot" else prompts.CHAT_HARM_QUESTION
    return block, prompts.HARMLESS, prompts.HARMFUL


def _token(tokenizer, text: str) -> int:
    return tokenizer(text, add_special_tokens=False).input_ids[0]


def _yesno_tails(cfg: EvaluatorConfig) -> list[str]:
    """The harm question(s) asked after the conversation; "No" is the good answer to each."""
    if cfg.principle:
        questions = [q.format(principle=cfg.principle) for q in prompts.YESNO_PRINCIPLE_QUESTIONS]
    else:
        questions = list(prompts.YESNO_HARM_QUESTIONS)
    return ["\n\n" + q for q in questions[: 2 if cfg.both_orders else 1]]


def _tails(cfg: EvaluatorConfig, good: str, bad: str) -> tuple[list[str], str, list[tuple[str, str]]]:
    """(text after the answer per order, answer cue, (good, bad) option text per order)."""
    if cfg.criterion == "truthful":  # one Yes/No question, as the paper's TruthfulQA setting
        return ["\nIs the answer truthful? Answer Yes or No."], "Answer:", [(good, bad)]
    if cfg.prompt == "yesno":  # the reply's first word is the verdict
        tails = _yesno_tails(cfg)
        return tails, "", [(good, bad)] * len(tails)
    orders = [(good, bad), (bad, good)][: 2 if cfg.both_orders else 1]
    tails = ["\n" + prompts.options_text(first, second) for first, second in orders]
    if cfg.prompt == "chat":
        tails = [t + "\nReply with the letter of the right option." for t in tails]
    return tails, "The answer is: (", [("A", "B"), ("B", "A")][: len(orders)]


def build_layout(tokenizer, cfg: EvaluatorConfig) -> EvalLayout:
    block, good, bad = _instruction(cfg)
    tails, cue, options = _tails(cfg, good, bad)
    fixed_text, suffixes = None, []
    for tail in tails:
        content = block + "\n\n" + _CONV + _ANSWER + tail
        text = tokenizer.apply_chat_template([{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True)
        head, rest = (text + cue).split(_CONV)
        fixed_text = head
        suffixes.append(tokenizer(rest.split(_ANSWER)[1], add_special_tokens=False).input_ids)
    return EvalLayout(
        fixed=tokenizer(fixed_text, add_special_tokens=False).input_ids,
        suffixes=suffixes,
        options=[(_token(tokenizer, g), _token(tokenizer, b)) for g, b in options],
        truthful=cfg.criterion == "truthful",
    )


def render_conversation(messages, truthful: bool) -> str:
    """The conversation under review in the paper's plain layout, ending where the answer starts."""
    if truthful:
        question = next(m["content"] for m in reversed(messages) if m["role"] == "user")
        return f"Q: {question}\nA:"
    labels = {"user": "Human", "assistant": "Assistant", "system": "System"}
    turns = [f"{labels.get(m['role'], m['role'])}: {m['content']}" for m in messages]
    return "\n".join(turns) + "\nAssistant:"


def combine(log_odds: list[float], score: str) -> float:
    if score == "vote":  # the paper: each order votes for the good option when it is the more likely
        votes = sum(lo > 0 for lo in log_odds)
        return 2.0 * (votes / len(log_odds) - 0.5)
    mean = sum(log_odds) / len(log_odds)
    return math.tanh(mean / 2.0)  # = 2 sigmoid(mean) - 1


class SelfEvaluator:
    """One evaluation format on one model; owns the cache of its fixed prefix."""

    def __init__(self, runner: ModelRunner, tokenizer, cfg: EvaluatorConfig):
        self.runner, self.tokenizer, self.cfg = runner, tokenizer, cfg
        self.layout = build_layout(tokenizer, cfg)
        self.prefix_cache = runner.new_cache()
        runner.forward(self.prefix_cache, torch.tensor(self.layout.fixed))

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
        self.conversation_ids = evaluator.tokenizer(conversation, add_special_tokens=False).input_ids
        self.verdicts: OrderedDict[str, SelfEvalResult] = OrderedDict()

    def close(self) -> None:
        self.runner.free_cache(self.cache)

    def evaluate(self, answer_text: str) -> SelfEvalResult:
        if answer_text in self.verdicts:
            self.verdicts.move_to_end(answer_text)
            return self.verdicts[answer_text]
        result = self._run(answer_text)
        self.verdicts[answer_text] = result
        if len(self.verdicts) > VERDICT_CACHE_SIZE:
            self.verdicts.popitem(last=False)
        if self.totals is not None:
            self.totals.self_evaluations += 1
        return result

    def _run(self, answer_text: str) -> SelfEvalResult:
        answer = " " + answer_text.lstrip() if answer_text.strip() else ""
        target = self.base + self.conversation_ids + self.ev.tokenizer(answer, add_special_tokens=False).input_ids
        keep = _common_prefix(self.fed, target)
        self.runner.truncate(self.cache, keep)
        layout = TreeLayout.shared_prefix(keep, self.runner.device)
        shared, suffixes = self._split_suffixes()
        new = target[keep:] + shared
        tags, positions = [-1] * len(new), list(range(keep, keep + len(new)))
        last_rows = []
        for order, suffix in enumerate(suffixes):
            tags += [order] * len(suffix)
            positions += list(range(keep + len(new), keep + len(new) + len(suffix)))
            last_rows.append(len(tags) - 1)
        position_ids, mask = layout.append(tags, positions)
        ids = torch.tensor(new + [t for s in suffixes for t in s])
        logits = self.runner.forward(
            self.cache, ids, position_ids, mask, torch.tensor(last_rows), totals=self.totals
        )
        self.runner.truncate(self.cache, len(target))
        self.fed = target
        logprobs = torch.log_softmax(logits, dim=-1)
        options = torch.tensor(self.ev.layout.options, device=logprobs.device)  # [orders, 2]
        rows = torch.arange(len(last_rows), device=logprobs.device)
        log_odds = (logprobs[rows, options[:, 0]] - logprobs[rows, options[:, 1]]).tolist()
        return SelfEvalResult(combine(log_odds, self.ev.cfg.score), log_odds)

    def _split_suffixes(self) -> tuple[list[int], list[list[int]]]:
        n = self.ev.layout.shared_suffix
        return self.ev.layout.suffixes[0][:n], [s[n:] for s in self.ev.layout.suffixes]


def _common_prefix(*lists: list[int]) -> int:
    n = min(map(len, lists))
    for i in range(n):
        if any(other[i] != lists[0][i] for other in lists[1:]):
            return i
    return n
