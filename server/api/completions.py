"""POST /v1/completions: a text prompt the model continues as it is (no chat template), and the
text_completion bodies. Under RAIN the self-evaluation sees the prompt as the user's turn."""
from __future__ import annotations

from typing import ClassVar, Optional, Sequence

from pydantic import Field

from rain_core.config import GenerationRequest, RainConfig, SamplingParams

from server.api import render
from server.api.bodies import CompletionChoice, CompletionLogprobs, TextCompletion
from server.api.run import Outcome, Run, Step
from server.api.schemas import MAX_TOP_LOGPROBS, UNSUPPORTED, ChoicesBody
from server.api.tokens import TokenTexts
from server.workers.protocol import Delta, Done


class CompletionRequest(ChoicesBody):
    UNSUPPORTED: ClassVar[dict[str, tuple]] = {**UNSUPPORTED, "echo": (False,), "suffix": (), "best_of": (1,)}
    DEFAULT_MAX_TOKENS: ClassVar[int] = 16  # OpenAI's default for this endpoint
    PROMPT_FIELD: ClassVar[str] = "prompt"

    prompt: str = Field(min_length=1)
    max_tokens: Optional[int] = Field(None, ge=1)
    logprobs: Optional[int] = Field(None, ge=0, le=MAX_TOP_LOGPROBS)

    @property
    def token_limit(self) -> Optional[int]:
        return self.max_tokens

    @property
    def top_logprobs_count(self) -> Optional[int]:
        return self.logprobs

    def with_prompt(self, params: SamplingParams, rain: Optional[RainConfig]) -> GenerationRequest:
        return GenerationRequest.completion(self.prompt, params, rain)


class CompletionRender:
    def __init__(self, response_id: str, created: int, model: str, texts: TokenTexts, include_usage: bool = False):
        self.id, self.created, self.model, self.texts = response_id, created, model, texts
        self.include_usage = include_usage
        self.offsets: dict[int, int] = {}  # streamed text so far, per choice: where logprobs' offsets start

    def _logprobs(self, index: int, deltas: Sequence[Delta]) -> CompletionLogprobs:
        offset = self.offsets.get(index, 0)
        entries = [t for d in deltas for t in d.logprobs or []]
        self.offsets[index] = offset + sum(len(d.text) for d in deltas)
        return CompletionLogprobs(**self.texts.completion_logprobs(entries, offset))

    def _body(self, choices: list[CompletionChoice], **extra) -> TextCompletion:
        return TextCompletion(id=self.id, object="text_completion", created=self.created, model=self.model,
                              choices=choices, **extra)

    def completion(self, outcomes: Sequence[Outcome]) -> TextCompletion:
        choices = [CompletionChoice(
            index=i, text=o.text,
            logprobs=self._logprobs(i, o.deltas) if o.wants_logprobs else None,
            finish_reason=render.finish_reason(o.done),
            rain=render.full_summary(o.job, o.deltas, o.done),
        ) for i, o in enumerate(outcomes)]
        one = {"rain": choices[0].rain} if len(outcomes) == 1 else {}
        return self._body(choices, usage=render.usage([o.done for o in outcomes]), **one)

    @staticmethod
    def opening(choices: int) -> list[str]:
        return []  # text completions open with their first text

    def step(self, index: int, run: Run, step: Step) -> str:
        delta, done = step.delta, step.done
        choice = CompletionChoice(index=index, text=delta.text if delta else "",
                                  logprobs=self._logprobs(index, [delta]) if delta and run.wants_logprobs else None,
                                  finish_reason=done and render.finish_reason(done))
        rain = render.streamed_rain(run.job, delta, done)
        extra = {"usage": None} if self.include_usage else {}
        return self._body([choice], **extra, **({"rain": rain} if rain is not None else {})).dump()

    def usage(self, dones: Sequence[Done]) -> str:
        return self._body([], usage=render.usage(dones)).dump()
