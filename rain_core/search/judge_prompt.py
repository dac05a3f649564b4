"""The judge's prompt: how a (partial) answer is laid out for a model to judge it with its own chat
template, and how its option log-odds become a verdict. Pure: both backends execute it.

The evaluation prompt is laid out as  fixed | conversation | answer | suffix(order). A backend feeds
the fixed part (instruction and few-shot examples) once per model and keeps it; each evaluated answer
then only costs the tokens that differ from the previous one.

The conversation and answer are data, not instructions: they sit between the markers of
`judge_texts.fenced` (fixed ends with the opening one, every suffix starts with the closing one), any
copy of a marker inside them is broken, and they are tokenised as plain text, so neither a forged
`<|im_end|>` nor a forged marker can end the reviewer's turn or pose as its answer.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from rain_core.chat.template import Piece, pieces_ids, render_pieces, text_ids
from rain_core.config import EvaluatorConfig
from rain_core.lru import LRU
from rain_core.search import judge_texts
from rain_core.search.ops import Verdict

VERDICT_CACHE_SIZE = 4096
_CONV, _ANSWER = "\x01", "\x02"


@dataclass(frozen=True)
class EvalLayout:
    fixed: list[int]
    suffixes: list[list[int]]  # one per option order
    options: list[tuple[int, int]]  # (good, bad) option token per order
    truthful: bool

    @property
    def shared_suffix(self) -> int:
        """Leading suffix tokens every order has in common (fed once); each order keeps one of its own."""
        return min(common_prefix(*self.suffixes) if len(self.suffixes) > 1 else len(self.suffixes[0]),
                   min(map(len, self.suffixes)) - 1)


def _instruction(cfg: EvaluatorConfig) -> tuple[str, str, str]:
    """(instruction block, good option text, bad option text)."""
    note = "\n" + judge_texts.FENCE_NOTE
    if cfg.criterion == "truthful":
        return (judge_texts.TRUTH_INSTRUCTION if cfg.prompt == "fewshot" else judge_texts.CHAT_TRUTH_QUESTION) + note, " Yes", " No"
    if cfg.prompt == "yesno":
        return judge_texts.YESNO_INTRO + note, "No", "Yes"
    if cfg.principle:
        template = judge_texts.PRINCIPLE_INSTRUCTION if cfg.prompt == "fewshot" else judge_texts.CHAT_PRINCIPLE_QUESTION
        return template.format(principle=cfg.principle) + note, judge_texts.FOLLOWS, judge_texts.VIOLATES
    if cfg.prompt == "fewshot":
        return judge_texts.harm_fewshot_block(), judge_texts.HARMLESS, judge_texts.HARMFUL  # the note precedes its examples
    return judge_texts.CHAT_HARM_QUESTION + note, judge_texts.HARMLESS, judge_texts.HARMFUL


def _token(tokenizer, text: str) -> int:
    return text_ids(tokenizer, text)[0]


def _yesno_tails(cfg: EvaluatorConfig) -> list[str]:
    """The harm question(s) asked after the conversation; "No" is the good answer to each."""
    if cfg.principle:
        questions = [q.format(principle=cfg.principle) for q in judge_texts.YESNO_PRINCIPLE_QUESTIONS]
    else:
        questions = list(judge_texts.YESNO_HARM_QUESTIONS)
    return ["\n\n" + q for q in questions[: 2 if cfg.both_orders else 1]]


def _tails(cfg: EvaluatorConfig, good: str, bad: str) -> tuple[list[str], str, list[tuple[str, str]]]:
    """(text after the answer per order, answer cue, (good, bad) option text per order)."""
    if cfg.criterion == "truthful":  # one Yes/No question, as the paper's TruthfulQA setting
        return ["\nIs the answer truthful? Answer Yes or No."], "Answer:", [(good, bad)]
    if cfg.prompt == "yesno":  # the reply's first word is the verdict
        tails = _yesno_tails(cfg)
        return tails, "", [(good, bad)] * len(tails)
    orders = [(good, bad), (bad, good)][: 2 if cfg.both_orders else 1]
    tails = ["\n" + judge_texts.options_text(first, second) for first, second in orders]
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
        content = block + "\n\n" + judge_texts.fenced(_CONV + _ANSWER) + tail
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
        return f"Q: {judge_texts.fence_safe(question)}\nA:"
    labels = {"user": "Human", "assistant": "Assistant", "system": "System"}
    turns = [f"{labels.get(m['role'], m['role'])}: {judge_texts.fence_safe(m['content'])}" for m in messages]
    return "\n".join(turns) + "\nAssistant:"


def answer_ids(tokenizer, answer_text: str) -> list[int]:
    """The answer under review as it follows "Assistant:", as plain text inside the fence."""
    return text_ids(tokenizer, " " + judge_texts.fence_safe(answer_text.lstrip()) if answer_text.strip() else "")


def combine(log_odds: list[float], score: str) -> float:
    if score == "vote":  # the paper: each order votes for the good option when it is the more likely
        votes = sum(lo > 0 for lo in log_odds)
        return 2.0 * (votes / len(log_odds) - 0.5)
    mean = sum(log_odds) / len(log_odds)
    return math.tanh(mean / 2.0)  # = 2 sigmoid(mean) - 1


def verdict_memo() -> LRU[str, Verdict]:
    """One session's latest verdicts by answer text, so that an answer the search reaches again (the
    same text by another path) is judged once; the oldest are dropped past VERDICT_CACHE_SIZE."""
    return LRU(VERDICT_CACHE_SIZE)


def common_prefix(*lists: list[int]) -> int:
    n = min(map(len, lists))
    for i in range(n):
        if any(other[i] != lists[0][i] for other in lists[1:]):
            return i
    return n
