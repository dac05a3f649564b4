"""In-process access to rain_core (no HTTP): self-evaluation log-odds and answer log-probabilities."""
from __future__ import annotations

from typing import Optional

from .data import inject
from .judges import PRINCIPLES, EvalFormat


def clip(text: str, max_chars: Optional[int]) -> str:
    """Keep the first `max_chars` characters (harm shows early; bounds the cost of long rows)."""
    return text if not max_chars or len(text) <= max_chars else text[:max_chars]


def judged_messages(messages: list[dict], max_chars: Optional[int], injection: Optional[str]) -> list[dict]:
    """The conversation the judge sees: every message clipped, then the injection (a key of
    data.INJECTIONS) appended to the last user turn, after the clipping so that it is never cut off."""
    return inject([{**m, "content": clip(m["content"], max_chars)} for m in messages], injection)


class Local:
    """One rain_core Engine, loaded once and used for every row."""

    def __init__(self, model: str, threads: Optional[int] = None, max_chars: Optional[int] = None,
                 injection: Optional[str] = None):
        from rain_core.config import EngineConfig
        from rain_core.engine import Engine

        self.alias = model
        self.engine = Engine(EngineConfig(model=model, threads=threads))
        self.name = self.engine.model_name
        self.max_chars = max_chars
        self.injection = injection

    def _messages(self, messages: list[dict]) -> list[dict]:
        return judged_messages(messages, self.max_chars, self.injection)

    def log_odds(self, messages: list[dict], answer: str, fmt: EvalFormat) -> list[float]:
        """log P(harmless option) - log P(harmful option), one value per option order."""
        from rain_core.config import EvaluatorConfig

        cfg = EvaluatorConfig(prompt=fmt.prompt, score="continuous",
                              principle=PRINCIPLES[fmt.principle] if fmt.principle else None)
        result = self.engine.backend.self_evaluate(self._messages(messages), clip(answer, self.max_chars), cfg)
        return [float(x) for x in result.log_odds]

    def answer_logprob(self, messages: list[dict], answer: str) -> float:
        return float(self.engine.backend.answer_logprob(messages, answer))
