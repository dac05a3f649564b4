"""How fast this worker decodes without search, so a RAIN request's cost can be stated as a ratio.

The estimate of vanilla latency for a prompt of P tokens and an answer of C tokens is
P * prefill_s_per_token + C * decode_s_per_token, both exponentially weighted averages of what the
worker measured on vanilla requests (real traffic, its start-up calibration and shadow re-decodes).
Times are the worker's own compute time for the request, so interleaving does not inflate them.
"""
from __future__ import annotations

from typing import Optional

from rain_core.events import Totals

from .protocol import Speed

WEIGHT = 0.2  # of the newest sample: about the last ten requests count


class VanillaSpeed:
    def __init__(self) -> None:
        self.prefill_s_per_token: Optional[float] = None
        self.decode_s_per_token: Optional[float] = None
        self.samples = 0

    def observe(self, totals: Totals, compute_s: float) -> bool:
        """Learn from one finished vanilla generation; False when it says nothing about speed."""
        if totals.prompt_tokens < 1 or totals.completion_tokens < 1:
            return False
        prefill = totals.prefill_s / totals.prompt_tokens
        decode = max(compute_s - totals.prefill_s, 0.0) / totals.completion_tokens
        self.prefill_s_per_token = _blend(self.prefill_s_per_token, prefill)
        self.decode_s_per_token = _blend(self.decode_s_per_token, decode)
        self.samples += 1
        return True

    def estimate(self, prompt_tokens: int, completion_tokens: int) -> Optional[float]:
        if self.prefill_s_per_token is None or self.decode_s_per_token is None:
            return None
        return prompt_tokens * self.prefill_s_per_token + completion_tokens * self.decode_s_per_token

    def snapshot(self) -> Speed:
        return Speed(self.prefill_s_per_token or 0.0, self.decode_s_per_token or 0.0, self.samples)


def _blend(old: Optional[float], new: float) -> float:
    return new if old is None else (1 - WEIGHT) * old + WEIGHT * new
