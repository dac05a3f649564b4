"""Plain decoding: the baseline RAIN is measured against, one token per commit."""
from __future__ import annotations

from rain_core.config import SamplingParams
from rain_core.events import Commit
from rain_core.search.ops import Decode, Steps


def vanilla_tokens(params: SamplingParams) -> Steps:
    """Propose one token at a time at the state, each appended to it as it is chosen."""
    op = Decode(params.temperature, params.top_p or 1.0, params.logprobs)
    while True:
        decoded = yield op
        yield Commit([decoded.token], "", logprobs=decoded.logprobs)
