"""Log-probabilities of answer tokens under the model, computed on the device; a handful of numbers
per token leave it."""
from __future__ import annotations

from typing import Optional

import torch

from rain_core.events import TokenLogprob, TopLogprob


def token_logprobs(logits: torch.Tensor, token_ids: list[int], top: int) -> list[TokenLogprob]:
    """`logits` [len(token_ids), vocab]: row i is the distribution that token_ids[i] was drawn from."""
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    ids = torch.tensor(token_ids, device=logprobs.device)
    chosen = logprobs.gather(-1, ids.unsqueeze(-1)).squeeze(-1).tolist()
    if top:
        values, indices = logprobs.topk(top, dim=-1)
        tops = [tuple(TopLogprob(i, v) for i, v in zip(row_ids, row_values))
                for row_ids, row_values in zip(indices.tolist(), values.tolist())]
    else:
        tops = [()] * len(token_ids)
    return [TokenLogprob(t, lp, tp) for t, lp, tp in zip(token_ids, chosen, tops)]


def maybe_logprobs(logits: torch.Tensor, token_ids: list[int], top: Optional[int]) -> Optional[list[TokenLogprob]]:
    return None if top is None else token_logprobs(logits, token_ids, top)
