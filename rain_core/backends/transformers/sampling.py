"""Token choice on the device: greedy, temperature, top-k and top-p, with a per-request generator."""
from __future__ import annotations

from typing import Optional

import torch


def make_generator(seed: Optional[int], device: torch.device) -> torch.Generator:
    generator = torch.Generator(device=device)
    generator.manual_seed(seed if seed is not None else torch.seed() % (2**63))
    return generator


def filtered_probs(logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Probabilities [rows, vocab] after temperature, then top-k, then nucleus filtering."""
    logits = logits / max(temperature, 1e-5)
    if top_k and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True, dim=-1)
        # keep the smallest prefix whose mass reaches top_p (the first token always survives)
        drop_sorted = (sorted_probs.cumsum(-1) - sorted_probs) >= top_p
        probs = probs.masked_fill(drop_sorted.scatter(-1, order, drop_sorted), 0.0)
        probs = probs / probs.sum(-1, keepdim=True)
    return probs


def sample(
    logits: torch.Tensor,
    generator: torch.Generator,
    temperature: Optional[float] = None,
    top_k: int = 0,
    top_p: float = 1.0,
) -> torch.Tensor:
    """One token id per row of `logits` [rows, vocab]; greedy when temperature is None or 0."""
    if not temperature:
        return logits.argmax(-1)
    probs = filtered_probs(logits, temperature, top_k, top_p)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
