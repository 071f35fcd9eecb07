"""A tiny random Llama saved as an HF checkpoint, shared by the layout tests."""

from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

# Matches conf/model/tiny_llama.yaml.
TINY = dict(vocab_size=250, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
            rms_norm_eps=1e-5, rope_theta=10000.0)


def make_tiny_llama(path: Path, tied: bool = False, seed: int = 0, std: float = 0.02) -> LlamaForCausalLM:
    """Random weights (norm weights too, so their conversion is exercised).

    A larger ``std`` gives peakier, less repetitive greedy continuations."""
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**TINY, tie_word_embeddings=tied, initializer_range=std)).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.uniform_(0.5, 1.5)
    model.save_pretrained(path)
    return model


def make_batch(n: int = 4, s: int = 17, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, TINY["vocab_size"], (n, s), generator=torch.Generator().manual_seed(seed))
