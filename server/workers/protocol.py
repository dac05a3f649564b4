"""Typed messages between the API process and its worker processes (pickled over one pipe per worker).

API -> worker: Submit, Cancel, Shutdown.
Worker -> API: Ready once the model is loaded, Delta per committed token set, then exactly one of
Done, Failed or Cancelled per submitted request; Speed whenever its vanilla speed estimate changes.
The set that ends the answer travels inside its Done, so an answer's end is one message: a worker that
dies after it has nothing left to resume, and one that dies before it left no ended answer behind.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

from rain_core.config import EngineConfig, GenerationRequest
from rain_core.events import CommitStats, EngineLoad, FinishReason, Judgment, TokenLogprob, Totals


@dataclass(frozen=True)
class WorkerConfig:
    engine: EngineConfig
    visible_devices: Optional[str] = None  # CUDA_VISIBLE_DEVICES of this worker; None: inherit
    shadow_vanilla_rate: float = 0.0
    warm_rain: bool = False  # load the encoder and the self-evaluation prefix before reporting Ready


# API -> worker ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Submit:
    id: str
    request: GenerationRequest


@dataclass(frozen=True)
class Cancel:
    id: str


@dataclass(frozen=True)
class Shutdown:
    pass


# worker -> API ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Ready:
    pid: int
    model_name: str
    context_length: int


HEARTBEAT_S = 1.0  # how often a ready worker says it is alive, busy or idle


@dataclass(frozen=True)
class Heartbeat:
    """The worker's event loop still runs: a worker that sends none for --worker-hang-timeout is hung."""


@dataclass(frozen=True)
class Speed:
    """The worker's measured vanilla speeds, the denominator of the overhead ratio."""

    prefill_s_per_token: float
    decode_s_per_token: float
    samples: int


@dataclass(frozen=True)
class Delta:
    """One committed token set: its text is streamed, its ids kept to resume the answer on another worker."""

    id: str
    text: str
    token_ids: tuple[int, ...]
    stats: Optional[CommitStats] = None  # the search behind it (RAIN only)
    logprobs: Optional[list[TokenLogprob]] = None  # one per token of the set, when the request asks for them

    @property
    def tokens(self) -> int:
        return len(self.token_ids)


@dataclass(frozen=True)
class Done:
    id: str
    finish_reason: FinishReason
    totals: Totals
    last: Optional[Delta]  # the set that ended the answer; None when it ended without a set of its own
    worker_s: float  # the request's wall time in its worker, from its Submit to its end
    vanilla_estimate_s: Optional[float] = None  # vanilla decoding of the same prompt and answer length, here and now
    overhead_ratio: Optional[float] = None  # worker_s / vanilla_estimate_s, judged requests only
    judgment: Optional[Judgment] = None  # strategy and judge of a searched or judged request
    engine_loads: Optional[dict[str, EngineLoad]] = None  # the worker's engine steps since its previous Done, by model id
    engine_work: Optional[dict[str, float]] = None  # tokens each model computed for it over a vanilla answer's, by model id


@dataclass(frozen=True)
class Failed:
    id: str
    status: int
    message: str
    param: Optional[str] = None
    code: Optional[str] = None


@dataclass(frozen=True)
class Cancelled:
    id: str


ToWorker = Union[Submit, Cancel, Shutdown]
FromWorker = Union[Ready, Heartbeat, Speed, Delta, Done, Failed, Cancelled]
