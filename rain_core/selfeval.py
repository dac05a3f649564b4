"""Self-evaluation: the model judges a (partial) answer with its own chat template.

The evaluation prompt is laid out as  fixed | conversation | answer | suffix(order). The fixed part
(instruction and few-shot examples) is fed once per model and kept as a prefix cache; each request
clones it and adds its conversation; each evaluated answer only feeds the tokens that differ from
the previous one, and both option orders ride in the same forward call as two branches.

The conversation and answer are data, not instructions: they sit between the markers of
`prompts.fenced` (fixed ends with the opening one, every suffix starts with the closing one), any
copy of a marker inside them is broken, and they are tokenised as plain text, so neither a forged
`<|im_end|>` nor a forged marker can end the reviewer's turn or pose as its answer.
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
from .template import Piece, pieces_ids, render_pieces, text_ids

VERDICT_CACHE_SIZE = 4096
ANSWER_TAG = -2  # answers judged together are branches ANSWER_TAG, ANSWER_TAG - 1, ...; their option orders 0, 1, ...
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
    note = "\n" + prompts.FENCE_NOTE
    if cfg.criterion == "truthful":
        return (prompts.TRUTH_INSTRUCTION if cfg.prompt == "fewshot" else prompts.CHAT_TRUTH_QUESTION) + note, " Yes", " No"
    if cfg.prompt == "yesno":
        return prompts.YESNO_INTRO + note, "No", "Yes"
    if cfg.principle:
        template = prompts.PRINCIPLE_INSTRUCTION if cfg.prompt == "fewshot" else prompts.CHAT_PRINCIPLE_QUESTION
        return template.format(principle=cfg.principle) + note, prompts.FOLLOWS, prompts.VIOLATES
    if cfg.prompt == "fewshot":
        return prompts.harm_fewshot_block(), prompts.HARMLESS, prompts.HARMFUL  # the note precedes its examples
    return prompts.CHAT_HARM_QUESTION + note, prompts.HARMLESS, prompts.HARMFUL


def _token(tokenizer, text: str) -> int:
    return text_ids(tokenizer, text)[0]


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
    """The judge's prompt as one user turn of the model's chat template. Its content (instruction, a
    principle included, and the fenced conversation) is tokenised as text; only the template's own
    pieces carry control tokens."""
    block, good, bad = _instruction(cfg)
    tails, cue, options = _tails(cfg, good, bad)
    fixed, suffixes = [], []
    for tail in tails:
        content = block + "\n\n" + prompts.fenced(_CONV + _ANSWER) + tail
        pieces = render_pieces(tokenizer, [{"role": "user", "content": content}]) + [Piece(cue, False)]
        at = next(i for i, p in enumerate(pieces) if p.content)
        head, rest = pieces[at].text.split(_CONV + _ANSWER)
        fixed = pieces_ids(tokenizer, pieces[:at] + [Piece(head, True)])
        suffixes.append(pieces_ids(tokenizer, [Piece(rest, True)] + pieces[at + 1:]))
    return EvalLayout(
        fixed=fixed,
        suffixes=suffixes,
        options=[(_token(tokenizer, g), _token(tokenizer, b)) for g, b in options],
        truthful=cfg.criterion == "truthful",
    )


def render_conversation(messages, truthful: bool) -> str:
    """The conversation under review in the paper's plain layout, ending where the answer starts;
    copies of the fence's markers in the messages are broken."""
    if truthful:
        question = next(m["content"] for m in reversed(messages) if m["role"] == "user")
        return f"Q: {prompts.fence_safe(question)}\nA:"
    labels = {"user": "Human", "assistant": "Assistant", "system": "System"}
    turns = [f"{labels.get(m['role'], m['role'])}: {prompts.fence_safe(m['content'])}" for m in messages]
    return "\n".join(turns) + "\nAssistant:"


def answer_ids(tokenizer, answer_text: str) -> list[int]:
    """The answer under review as it follows "Assistant:", as plain text inside the fence."""
    return text_ids(tokenizer, " " + prompts.fence_safe(answer_text.lstrip()) if answer_text.strip() else "")


def combine(log_odds: list[float], score: str) -> float:
    if score == "vote":  # the paper: each order votes for the good option when it is the more likely
        votes = sum(lo > 0 for lo in log_odds)
        return 2.0 * (votes / len(log_odds) - 0.5)
    mean = sum(log_odds) / len(log_odds)
    return math.tanh(mean / 2.0)  # = 2 sigmoid(mean) - 1


class Verdicts:
    """One session's latest verdicts by answer text, so that an answer the search reaches again (the
    same text by another path) is judged once; the oldest are dropped past VERDICT_CACHE_SIZE."""

    def __init__(self) -> None:
        self._by_text: OrderedDict[str, SelfEvalResult] = OrderedDict()

    def get(self, answer_text: str) -> Optional[SelfEvalResult]:
        if answer_text in self._by_text:
            self._by_text.move_to_end(answer_text)
        return self._by_text.get(answer_text)

    def keep(self, answer_text: str, result: SelfEvalResult) -> None:
        self._by_text[answer_text] = result
        if len(self._by_text) > VERDICT_CACHE_SIZE:
            self._by_text.popitem(last=False)


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
        self.conversation_ids = text_ids(evaluator.tokenizer, conversation)
        self.verdicts = Verdicts()

    def close(self) -> None:
        self.runner.free_cache(self.cache)

    def evaluate(self, answer_text: str) -> SelfEvalResult:
        return self.evaluate_all([answer_text])[0]

    def evaluate_all(self, answer_texts: list[str]) -> list[SelfEvalResult]:
        """Verdicts on several answers; those not judged before are judged in one forward call."""
        new = [text for text in dict.fromkeys(answer_texts) if self.verdicts.get(text) is None]
        if new:
            for text, result in zip(new, self._run(new)):
                self.verdicts.keep(text, result)
            if self.totals is not None:
                self.totals.self_evaluations += len(new)
        return [self.verdicts.get(text) for text in answer_texts]

    def _run(self, answer_texts: list[str]) -> list[SelfEvalResult]:
        """The answers are fed side by side as one prefix tree on top of what the cache holds, each
        option order a branch below its answer; the part they all share stays cached for the next
        evaluation, which likely extends it."""
        targets = [self.base + self.conversation_ids + answer_ids(self.ev.tokenizer, t) for t in answer_texts]
        keep = _common_prefix(self.fed, *targets)
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
        self.fed = targets[0][: _common_prefix(*targets)]
        self.runner.truncate(self.cache, len(self.fed))
        logprobs = torch.log_softmax(logits, dim=-1)
        options = torch.tensor(self.ev.layout.options, device=logprobs.device).repeat(len(targets), 1)
        rows = torch.arange(len(last_rows), device=logprobs.device)
        log_odds = (logprobs[rows, options[:, 0]] - logprobs[rows, options[:, 1]]).view(len(targets), -1).tolist()
        return [SelfEvalResult(combine(lo, self.ev.cfg.score), lo) for lo in log_odds]

    def _split_suffixes(self) -> tuple[list[int], list[list[int]]]:
        n = self.ev.layout.shared_suffix
        return self.ev.layout.suffixes[0][:n], [s[n:] for s in self.ev.layout.suffixes]


def _common_prefix(*lists: list[int]) -> int:
    n = min(map(len, lists))
    for i in range(n):
        if any(other[i] != lists[0][i] for other in lists[1:]):
            return i
    return n
