"""Plain KV-cached decoding: the baseline RAIN is measured against, one token per commit."""
from __future__ import annotations

from typing import Iterator

import torch

from .config import SamplingParams
from .events import Commit, Totals
from .logprobs import maybe_logprobs
from .runner import ModelRunner
from .sampling import sample


def vanilla_tokens(
    runner: ModelRunner,
    cache: int,
    logits: torch.Tensor,
    params: SamplingParams,
    generator: torch.Generator,
    totals: Totals,
) -> Iterator[Commit]:
    """Propose one token at a time from the prompt's last `logits`, extending `cache` as it goes."""
    while True:
        token = sample(logits, generator, params.temperature, top_p=params.top_p or 1.0)
        ids = [int(token)]
        yield Commit(ids, "", logprobs=maybe_logprobs(logits.view(1, -1), ids, params.logprobs))
        logits = runner.forward(cache, token.view(1, 1), totals=totals)
