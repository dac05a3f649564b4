"""Fixtures for rain_core tests: a tiny random Llama that shares SmolLM2's tokenizer (fast
mechanics), and the real embedded SmolLM2 (behaviour)."""
from __future__ import annotations

import pytest
import torch

from rain_core.config import EngineConfig
from rain_core.engine import Engine
from rain_core.models import load_tokenizer, resolve


@pytest.fixture(scope="session")
def smol_tokenizer():
    return load_tokenizer(resolve("smollm2"))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, smol_tokenizer):
    """A randomly initialised 2-layer Llama saved as an HF directory, with SmolLM2's tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(smol_tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
        eos_token_id=smol_tokenizer.eos_token_id, tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config)
    with torch.no_grad():  # sharper logits than the default init, so sampling is not uniform noise
        model.lm_head.weight.mul_(30)
    path = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(path)
    smol_tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_engine(tiny_model_dir):
    return Engine(EngineConfig(model=str(tiny_model_dir)))


@pytest.fixture(scope="session")
def smollm2():
    return Engine(EngineConfig(model="smollm2", threads=2))
