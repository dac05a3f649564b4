"""The one interface the engine sees: a Backend executes the model operations of rain_core/search/ops.py for
each request's Session, and owns the models (the served one and a --judge-model), their loads and their
lifecycle. Nothing above rain_core/backends/ asks which backend it has (vLLM's `EngineClient` plays this
part for vLLM's OpenAI layer)."""
from __future__ import annotations

from abc import ABC, abstractmethod

from rain_core.chat.answer import Vocabulary
from rain_core.config import GenerationRequest, JudgeChoice
from rain_core.events import EngineLoad, Totals
from rain_core.search.ops import Session


class EngineDead(RuntimeError):
    """An engine of the backend has died: its process cannot serve again (the pool restarts it)."""


class Backend(ABC):
    model_name: str  # the served model's id
    vocab: Vocabulary  # the served model's tokenizer and end-of-turn ids
    context_length: int
    judges: dict[JudgeChoice, str]  # the judges loaded, and the model id each reports ("self" for the served model)

    @abstractmethod
    async def open_session(self, request: GenerationRequest, state: list[int], committed: list[int],
                           totals: Totals) -> Session:
        """A request's state on this backend. `state`: the ids fed before the first operation (the prompt
        plus a resumed answer's ids); `committed`: the answer's ids so far. The session counts the work
        it causes into `totals` (`tokens_fed` for the served model, `judge_tokens_fed` for a --judge-model)."""

    @abstractmethod
    def take_loads(self) -> dict[str, EngineLoad]:
        """Each model's engine steps since the previous call, by model id."""

    @property
    def errored(self) -> bool:
        """Whether an engine has died (then every session fails with EngineDead)."""
        return False

    async def shutdown(self) -> None:
        """Release the engines."""
