"""What every generation endpoint's request shares, validated, and its translation to rain_core.

Anything we do not implement is a 400 that names the field: unknown fields are refused, and the
OpenAI fields we lack are accepted only at the value that means "off" (many clients send those).
Each endpoint (chat.py, completions.py, responses.py) subclasses `GenerationBody` with its prompt.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any, ClassVar, Literal, Optional, TypeVar, Union

from pydantic import (BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, WithJsonSchema, field_validator,
                      model_validator)

from rain_core.config import (PRESETS, THRESHOLD_STRATEGIES, EvalPrompt, EvalScore, GenerationRequest, JudgeChoice,
                              QNormalization, RainConfig, SamplingParams, Strategy, preset)

from server.api.errors import ApiError, echo
from server.api.limits import parse_json

Mode = Literal["rain", "vanilla"]
INT64 = (-(2**63), 2**63 - 1)  # OpenAI's seed is an int64; torch takes nothing wider
MAX_CHOICES = 8
MAX_TOP_LOGPROBS = 20
MAX_BEST_OF = 8
MAX_CACHE_SALT = 128  # characters, as vLLM's server takes
CACHE_SALT = r"^[^@/\\\x00]+$"  # vLLM's server refuses these: cache backends may put the salt in keys and paths
MAX_PARALLEL_LEAVES = 16  # leaves evaluated together per search round; more mostly costs search strength
# RAIN's search knobs: a baseline strategy has no search for them to shape, so they are refused there
SEARCH_OPTIONS = frozenset({"max_iters", "min_iters", "min_visits", "value_threshold", "c_puct", "q_normalization",
                            "num_candidates", "candidate_top_k", "similarity_threshold", "similarity_weight",
                            "time_budget_s", "iteration_cap", "simulation_max_tokens", "parallel_leaves"})

SEARCHING_STRATEGIES = ("rain", "gated")  # gated searches over the sentences its judge flags
GATED_OPTIONS = ("gated_search_budget", "gated_max_flagged", "gated_front_load")
# options that only one strategy (or a few) reads: elsewhere they would have no effect
OPTION_STRATEGIES = {"best_of": ("best_of_n",), "judge_threshold": tuple(sorted(THRESHOLD_STRATEGIES)),
                     **{option: ("gated",) for option in GATED_OPTIONS}}
MAX_GATED_SEARCH_BUDGET = 1000  # iterations per flagged sentence: 20 times the paper's maxT (50)
MAX_GATED_FLAGGED = 16
MAX_GATED_FRONT_LOAD = 16  # token sets; safety is decided in an answer's first few tokens

# OpenAI fields of every endpoint that rain-serve does not implement, with the values that ask for nothing.
UNSUPPORTED: dict[str, tuple] = {
    "frequency_penalty": (0,),
    "presence_penalty": (0,),
    "logit_bias": ({},),
    "tools": ([],),
    "tool_choice": ("none",),
    "parallel_tool_calls": (),
    "store": (False,),
    "metadata": (),
    "service_tier": ("auto", "default"),
    "prompt_cache_key": (),
    "prompt_cache_options": (),
    "prompt_cache_retention": (),
    "safety_identifier": (),
}


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)  # "7" is not a seed, nor 1 a boolean


def text_or_parts(part_types: list[str]) -> WithJsonSchema:
    """What the document says of a `content` that validators join from text parts into one string."""
    part = {"type": "object", "required": ["type", "text"], "additionalProperties": False,
            "properties": {"type": {"enum": part_types}, "text": {"type": "string"}}}
    return WithJsonSchema({"anyOf": [{"type": "string"}, {"type": "array", "items": part}]})


class StreamOptions(Strict):
    include_usage: bool = False


class RainOptions(Strict):
    """The `rain` object of a request (what the OpenAI SDK sends through `extra_body`)."""

    enabled: bool = True
    preset: str = "harmless"
    strategy: Optional[Strategy] = None  # before the fields whose validators read it
    judge: Optional[JudgeChoice] = None
    principle: Optional[str] = Field(None, min_length=1, max_length=4000)
    prompt: Optional[EvalPrompt] = None
    score: Optional[EvalScore] = None
    max_iters: Optional[int] = Field(None, ge=1, le=10_000)
    min_iters: Optional[int] = Field(None, ge=0, le=10_000)
    min_visits: Optional[int] = Field(None, ge=0, le=10_000)
    value_threshold: Optional[float] = Field(None, ge=-1.0, le=1.0)
    c_puct: Optional[float] = Field(None, gt=0.0, le=100.0)
    q_normalization: Optional[QNormalization] = None
    num_candidates: Optional[int] = Field(None, ge=1, le=100)
    candidate_top_k: Optional[int] = Field(None, ge=1, le=1000)
    similarity_threshold: Optional[float] = Field(None, ge=0.0, le=1.0)
    similarity_weight: Optional[float] = Field(None, ge=0.0, le=1.0)
    time_budget_s: Optional[float] = Field(None, gt=0.0, le=3600.0)
    iteration_cap: Optional[int] = Field(None, ge=1, le=10_000)
    simulation_max_tokens: Optional[int] = Field(None, ge=1, le=8192)
    parallel_leaves: Optional[int] = Field(None, ge=1, le=MAX_PARALLEL_LEAVES)
    best_of: Optional[int] = Field(None, ge=1, le=MAX_BEST_OF)
    judge_threshold: Optional[float] = Field(None, ge=-1.0, le=1.0)
    gated_search_budget: Optional[int] = Field(None, ge=0, le=MAX_GATED_SEARCH_BUDGET)
    gated_max_flagged: Optional[int] = Field(None, ge=0, le=MAX_GATED_FLAGGED)
    gated_front_load: Optional[int] = Field(None, ge=0, le=MAX_GATED_FRONT_LOAD)

    @field_validator("preset")
    @classmethod
    def _known_preset(cls, name: str) -> str:
        if name not in PRESETS:
            raise ValueError(f"unknown preset {echo(name)}; choose one of {sorted(PRESETS)}")
        return name

    @model_validator(mode="after")
    def _no_options_when_off(self) -> "RainOptions":
        if not self.enabled and self.model_fields_set - {"enabled"}:
            raise ValueError("search options need enabled=true (they would have no effect)")
        return self

    @field_validator(*sorted(SEARCH_OPTIONS))
    @classmethod
    def _only_for_the_search(cls, value: Any, info: ValidationInfo) -> Any:
        strategy = info.data.get("strategy") or "rain"
        if strategy not in SEARCHING_STRATEGIES:
            raise ValueError(f"is a search option and the {strategy} strategy does not search; "
                             "use strategy rain or gated")
        return value

    @field_validator(*OPTION_STRATEGIES)
    @classmethod
    def _only_for_its_strategy(cls, value: Any, info: ValidationInfo) -> Any:
        needs = OPTION_STRATEGIES[info.field_name]
        if info.data.get("strategy") not in needs:
            raise ValueError(f"needs strategy {' or '.join(needs)}")
        return value

    def config(self, temperature: Optional[float], top_p: Optional[float]) -> RainConfig:
        overrides = self.model_dump(exclude={"enabled", "preset"}, exclude_none=True)
        if temperature is not None:
            overrides["candidate_temperature"] = temperature
        if top_p is not None:
            overrides["candidate_top_p"] = top_p
        return preset(self.preset).with_overrides(**overrides)


class GenerationBody(Strict):
    """The fields of every generation endpoint; subclasses add the prompt and their own limits."""

    UNSUPPORTED: ClassVar[dict[str, tuple]] = UNSUPPORTED
    DEFAULT_MAX_TOKENS: ClassVar[int] = 256  # when the client sets no limit (less if the context has less room)
    PROMPT_FIELD: ClassVar[str] = "messages"  # named by the 400 of a prompt too long for the context

    model: str
    temperature: Optional[float] = Field(None, ge=0.0, le=2.0)
    top_p: Optional[float] = Field(None, gt=0.0, le=1.0)
    stream: bool = False
    user: Optional[str] = Field(None, max_length=256)
    # vLLM's extension, with its bounds: prompt states are cached and shared only among requests of one salt
    cache_salt: Optional[str] = Field(None, max_length=MAX_CACHE_SALT, pattern=CACHE_SALT)
    rain: Optional[RainOptions] = None

    @property
    def token_limit(self) -> Optional[int]:
        raise NotImplementedError

    @property
    def choices(self) -> int:
        return 1

    @property
    def include_usage(self) -> bool:
        return False

    @property
    def top_logprobs_count(self) -> Optional[int]:
        """None: no log-probabilities; k: each token's and the k most likely at its place."""
        return None

    @property
    def stops(self) -> tuple[str, ...]:
        return ()

    @property
    def seed_value(self) -> Optional[int]:
        return None

    def mode(self, default: Mode) -> Mode:
        if self.rain is None:
            return default
        return "rain" if self.rain.enabled else "vanilla"

    def generation(self, mode: Mode, max_new_tokens: int) -> GenerationRequest:
        params = SamplingParams(max_new_tokens, self.stops, self.seed_value, self.temperature, self.top_p,
                                self.top_logprobs_count)
        rain = (self.rain or RainOptions()).config(self.temperature, self.top_p) if mode == "rain" else None
        return replace(self.with_prompt(params, rain), streamed=self.stream, cache_salt=self.cache_salt)

    def with_prompt(self, params: SamplingParams, rain: Optional[RainConfig]) -> GenerationRequest:
        raise NotImplementedError


class ChoicesBody(GenerationBody):
    """Chat and text completions: `n` choices, stop sequences, seeds and usage in the stream."""

    seed: Optional[int] = Field(None, ge=INT64[0], le=INT64[1])
    stop: Union[str, list[str], None] = None
    n: int = Field(1, ge=1, le=MAX_CHOICES)
    stream_options: Optional[StreamOptions] = None

    @field_validator("stop")
    @classmethod
    def _stops(cls, stop: Union[str, list[str], None]) -> Union[str, list[str], None]:
        stops = [stop] if isinstance(stop, str) else stop or []
        if len(stops) > 4 or any(not s for s in stops):
            raise ValueError("stop takes up to 4 non-empty strings")
        return stop

    @property
    def choices(self) -> int:
        return self.n

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    @property
    def stops(self) -> tuple[str, ...]:
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())

    @property
    def seed_value(self) -> Optional[int]:
        return self.seed


def choice_requests(request: GenerationRequest, n: int) -> list[GenerationRequest]:
    """`n` independent generations of one request. Choice 0 keeps the client's seed, so its answer is
    the one n=1 gives; the others get distinct seeds of their own (or none, when none was given)."""
    seed = request.params.seed
    return [request if i == 0 or seed is None else
            replace(request, params=replace(request.params, seed=(seed + i) % 2**63)) for i in range(n)]


Body = TypeVar("Body", bound=GenerationBody)


def parse_request(kind: type[Body], raw: bytes) -> Body:
    data = parse_json(raw)
    for name, neutral in kind.UNSUPPORTED.items():
        value = data.pop(name, None)
        if value is not None and value not in neutral:
            raise ApiError(400, f"{name} is not supported by rain-serve", name, "unsupported_parameter")
    try:
        return kind.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc) from None


def validation_error(exc: ValidationError) -> ApiError:
    """The first problem, named the way OpenAI names parameters (messages[0].content)."""
    error = exc.errors()[0]
    param = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error["loc"]).lstrip(".") or None
    if error["type"] == "extra_forbidden":
        return ApiError(400, f"Unrecognized request argument supplied: {param}", param, "unknown_parameter")
    if error["type"] == "missing":
        return ApiError(400, f"{param} is required", param, "missing_parameter")
    message = error["msg"].removeprefix("Value error, ")
    return ApiError(400, f"{param}: {message}" if param else message, param, "invalid_value")


def empty_or_none(value: Any) -> Any:
    """For echoed fields that only tools would fill."""
    if value not in (None, [], ""):
        raise ValueError("is not supported by rain-serve")
    return value
