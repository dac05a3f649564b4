"""How long this worker takes to answer without search, so a judged request's latency can be stated as a
ratio against vanilla decoding on the same engine under the same load. The same quantity on every backend.

A request's latency is its own model time plus the time its model calls waited for other requests' calls
(`Totals.model_wait_s`: on the transformers backend requests take turns on one model thread; on vLLM they
share the engine's batches instead, so it is 0 there and their wall time already holds the load).

The estimate of vanilla latency for a prompt of P tokens and an answer of C tokens, in place of a judged
request, is P * prefill_s_per_token + (C - 1) * decode_s_per_token, plus, for each of the C model calls such an
answer makes (one per token, the prompt's prefill riding with the first), the wait per call the judged
request itself met: the load of other requests at that moment. The speeds are
exponentially weighted averages of what the worker measured on vanilla requests (real traffic, its start-up
calibration and shadow re-decodes), each from its wall time less its waits, split at its first token.
A shadow re-decode runs right after the judged request it stands for, so it may overlap that client's next
request; leaving its waits out keeps that load from counting twice.
"""
from __future__ import annotations

from typing import Optional

from rain_core.events import Totals

from server.workers.protocol import Speed

WEIGHT = 0.2  # of the newest sample: about the last ten requests count


class VanillaSpeed:
    def __init__(self) -> None:
        self.prefill_s_per_token: Optional[float] = None
        self.decode_s_per_token: Optional[float] = None
        self.samples = 0

    def observe(self, totals: Totals) -> bool:
        """Learn from one finished vanilla generation; False when it says nothing about speed."""
        if totals.prompt_tokens < 1 or totals.completion_tokens < 2 or totals.first_token_s is None:
            return False
        first = max(totals.first_token_s - totals.model_wait_first_s, 0.0)
        later = max(totals.wall_s - totals.first_token_s - (totals.model_wait_s - totals.model_wait_first_s), 0.0)
        self.prefill_s_per_token = _blend(self.prefill_s_per_token, first / totals.prompt_tokens)
        self.decode_s_per_token = _blend(self.decode_s_per_token, later / (totals.completion_tokens - 1))
        self.samples += 1
        return True

    def estimate(self, prompt_tokens: int, completion_tokens: int, wait_per_call_s: float = 0.0) -> Optional[float]:
        """Vanilla latency of such an answer now, its model calls each waiting `wait_per_call_s` for others."""
        if self.prefill_s_per_token is None or self.decode_s_per_token is None:
            return None
        own = prompt_tokens * self.prefill_s_per_token + max(completion_tokens - 1, 0) * self.decode_s_per_token
        return own + completion_tokens * wait_per_call_s

    def snapshot(self) -> Speed:
        return Speed(self.prefill_s_per_token or 0.0, self.decode_s_per_token or 0.0, self.samples)


def wait_per_call(totals: Totals) -> float:
    """How long each of a request's model calls waited for other requests' calls, on average."""
    return totals.model_wait_s / totals.model_calls if totals.model_calls else 0.0


def _blend(old: Optional[float], new: float) -> float:
    return new if old is None else (1 - WEIGHT) * old + WEIGHT * new
