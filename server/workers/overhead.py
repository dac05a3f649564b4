"""How long this worker takes to answer without search, so a judged request's latency can be stated as a
ratio against vanilla decoding on the same engine under the same load. The same quantity on every backend.

The estimate of vanilla latency for a prompt of P tokens and an answer of C tokens is
P * prefill_s_per_token + (C - 1) * decode_s_per_token: exponentially weighted averages of what the worker
measured on vanilla requests (real traffic, its start-up calibration and shadow re-decodes), each from the
request's wall time in the worker, split at its first token. Wall time, not compute time: under load both
the searched request and a vanilla one share the engine, and the ratio is the latency a client pays.
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

    def observe(self, totals: Totals, first_token_s: Optional[float], wall_s: float) -> bool:
        """Learn from one finished vanilla generation; False when it says nothing about speed."""
        if totals.prompt_tokens < 1 or totals.completion_tokens < 2 or first_token_s is None:
            return False
        prefill = first_token_s / totals.prompt_tokens
        decode = max(wall_s - first_token_s, 0.0) / (totals.completion_tokens - 1)
        self.prefill_s_per_token = _blend(self.prefill_s_per_token, prefill)
        self.decode_s_per_token = _blend(self.decode_s_per_token, decode)
        self.samples += 1
        return True

    def estimate(self, prompt_tokens: int, completion_tokens: int) -> Optional[float]:
        if self.prefill_s_per_token is None or self.decode_s_per_token is None:
            return None
        return prompt_tokens * self.prefill_s_per_token + max(completion_tokens - 1, 0) * self.decode_s_per_token

    def snapshot(self) -> Speed:
        return Speed(self.prefill_s_per_token or 0.0, self.decode_s_per_token or 0.0, self.samples)


def _blend(old: Optional[float], new: float) -> float:
    return new if old is None else (1 - WEIGHT) * old + WEIGHT * new
