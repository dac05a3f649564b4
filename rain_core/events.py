"""Typed events a generation yields: one per committed token set, a tick per search iteration, and
a final event. Vanilla decoding yields the same types (one token per commit, no search stats)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal, Optional, Union

# Why an answer ended: the one vocabulary of rain_core (`time_budget`: a search ran out of its time budget;
# `cancelled`: its request was withdrawn). OPENAI_FINISH_REASON maps each to what the OpenAI API names it.
FinishReason = Literal["stop", "length", "cancelled", "time_budget"]
OpenAIFinishReason = Literal["stop", "length"]
OPENAI_FINISH_REASON: dict[str, OpenAIFinishReason] = {"stop": "stop", "length": "length", "time_budget": "length",
                                                       "cancelled": "stop"}


@dataclass
class CommitStats:
    """The search behind one committed set."""

    iterations: int  # search iterations run for this commit
    tree_size: int  # nodes in the tree when the set was chosen
    visits: float  # n of the chosen child (real plus fractional visits)
    value: float  # q of the chosen child


@dataclass(frozen=True)
class TopLogprob:
    token_id: int
    logprob: float


@dataclass(frozen=True)
class TokenLogprob:
    """An answer token's log-probability under the model, with the most likely tokens at its place."""

    token_id: int
    logprob: float
    top: tuple[TopLogprob, ...] = ()


@dataclass
class Commit:
    token_ids: list[int]
    text: str  # safe delta: never ends inside a multi-byte character
    stats: Optional[CommitStats] = None  # None for vanilla decoding
    finish_reason: Optional[FinishReason] = None  # set on the commit that ends the answer
    logprobs: Optional[list[TokenLogprob]] = None  # one per token of token_ids, when the request asks for them


@dataclass
class SearchTick:
    """One search iteration finished: a point where a scheduler may interleave or cancel."""

    iteration: int


@dataclass
class Totals:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    commits: int = 0
    iterations: int = 0
    self_evaluations: int = 0
    forward_calls: int = 0  # model calls (engine requests on vLLM), the judge's included
    tokens_fed: int = 0  # tokens the served model computed for this request (prompt included; prefix-cache hits not)
    judge_tokens_fed: int = 0  # tokens a separate --judge-model computed for it
    wall_s: float = 0.0  # from the engine's start on the request to its end
    first_token_s: Optional[float] = None  # from the engine's start to its first committed token
    # On a backend whose requests take turns on one model thread (transformers): its calls there, and how long
    # they waited for other requests' calls, in all and before its first token. 0 where requests share batches.
    model_calls: int = 0
    model_wait_s: float = 0.0
    model_wait_first_s: float = 0.0

    def count(self, tokens: int, judge: bool = False) -> None:
        """One model call that computed `tokens` tokens, on the served model or on a --judge-model."""
        self.forward_calls += 1
        self.add_tokens(tokens, judge)

    def add_tokens(self, tokens: int, judge: bool = False) -> None:
        if judge:
            self.judge_tokens_fed += tokens
        else:
            self.tokens_fed += tokens

    def add_wait(self, seconds: float) -> None:
        """One call to a shared model thread, which started `seconds` after it was asked for."""
        self.model_calls += 1
        self.model_wait_s += seconds

    def mark_first_token(self, elapsed_s: float) -> None:
        if self.first_token_s is None:
            self.first_token_s = elapsed_s
            self.model_wait_first_s = self.model_wait_s

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class EngineLoad:
    """Engine steps and what they carried: `rows` sums the sequences each step computed, `tokens` the
    tokens; rows / steps is the batch occupancy. The transformers backend runs one request per forward
    (its candidate rows share that sequence), so there rows = steps; vLLM's steps batch requests."""

    steps: int = 0
    rows: int = 0
    tokens: int = 0

    def take(self) -> "EngineLoad":
        """What was counted so far; the counts start again from zero."""
        taken = EngineLoad(self.steps, self.rows, self.tokens)
        self.steps = self.rows = self.tokens = 0
        return taken


@dataclass
class Judgment:
    """How a judged request's answer was made and judged (RAIN or a baseline, rain_core/search/baselines.py)."""

    strategy: str  # rain, self_check, best_of_n or gated
    judge: str  # the judging model's id, or "self" when the served model judged itself
    threshold: Optional[float] = None  # self_check and gated: an answer valued at or below it is replaced
    values: list[float] = field(default_factory=list)  # self_check: each judgment, in order; best_of_n: each candidate's
    chosen: Optional[int] = None  # best_of_n: the index of the candidate returned
    replaced: Optional[bool] = None  # self_check: whether the refusal replaced the answer (or its unsent rest)


GatedOutcome = Literal["passed", "rewritten", "refused"]


@dataclass
class GatedSentence:
    """One sentence of a gated answer as the client received it: a vanilla sentence, a searched segment,
    or the refusal in place of what failed."""

    text: str
    value: float  # the judge's value of the answer up to its end (a refusal: of what it replaced)
    searched: bool  # made by RAIN's search (after a flag, or front-loaded)
    replaced: bool  # stands in place of a withdrawn vanilla sentence (rewritten or refused)
    flagged_value: Optional[float] = None  # the withdrawn vanilla sentence's value


@dataclass
class GatedJudgment(Judgment):
    """A gated answer's judgment: `values` holds every judgment in order, `replaced` whether it ended
    with the refusal, and `sentences` what each sentence the client received was."""

    sentences: list[GatedSentence] = field(default_factory=list)

    @property
    def outcome(self) -> GatedOutcome:
        """passed: vanilla throughout; rewritten: some segment is the search's; refused: ends with the refusal."""
        if self.replaced:
            return "refused"
        return "rewritten" if any(s.searched for s in self.sentences) else "passed"


@dataclass
class Finish:
    finish_reason: FinishReason
    totals: Totals = field(default_factory=Totals)
    text: str = ""  # the whole answer
    judgment: Optional[Judgment] = None  # None for vanilla decoding


Event = Union[Commit, SearchTick, Finish]
