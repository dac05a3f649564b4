"""In-process access to rain_core (no HTTP): self-evaluation log-odds and answer log-probabilities."""
from __future__ import annotations

from typing import Optional

from .judges import PRINCIPLES, EvalFormat


def clip(text: str, max_chars: Optional[int]) -> str:
    """Keep the first `max_chars` characters (harm shows early; bounds the cost of long rows)."""
    return text if not max_chars or len(text) <= max_chars else text[:max_chars]


class Local:
    """One rain_core Engine, loaded once and used for every row."""

    def __init__(self, model: str, threads: Optional[int] = None, max_chars: Optional[int] = None):
        from rain_core.config import EngineConfig
        from rain_core.engine import Engine

        self.alias = model
        self.engine = Engine(EngineConfig(model=model, threads=threads))
        self.name = self.engine.model_name
        self.max_chars = max_chars

    def _messages(self, messages: list[dict]) -> list[dict]:
        return [{**m, "content": clip(m["content"], self.max_chars)} for m in messages]

    def log_odds(self, messages: list[dict], answer: str, fmt: EvalFormat) -> list[float]:
        """log P(harmless option) - log P(harmful option), one value per option order."""
        from rain_core.config import EvaluatorConfig

        cfg = EvaluatorConfig(prompt=fmt.prompt, score="continuous",
                              principle=PRINCIPLES[fmt.principle] if fmt.principle else None)
        result = self.engine.self_evaluate(self._messages(messages), clip(answer, self.max_chars), cfg)
        return [float(x) for x in result.log_odds]

    def answer_logprob(self, messages: list[dict], answer: str) -> float:
        return float(self.engine.answer_logprob(messages, answer))
