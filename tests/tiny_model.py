"""Tiny random Llama and Qwen2 models saved as HF checkpoints, shared by the tests."""

from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

# Matches conf/model/tiny_llama.yaml.
TINY = dict(vocab_size=250, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
            rms_norm_eps=1e-5, rope_theta=10000.0)
# Matches conf/model/tiny_qwen2.yaml: TINY's shape with Qwen2's rope base, norm epsilon
# and tied embeddings (as Qwen2-0.5B/1.5B).
TINY_QWEN2 = dict(TINY, rms_norm_eps=1e-6, rope_theta=1000000.0, tie_word_embeddings=True)


def _randomize_norms(model) -> None:
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.uniform_(0.5, 1.5)


def make_tiny_llama(path: Path, tied: bool = False, seed: int = 0, std: float = 0.02) -> LlamaForCausalLM:
    """Random weights (norm weights too, so their conversion is exercised).

    A larger ``std`` gives peakier, less repetitive greedy continuations."""
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**TINY, tie_word_embeddings=tied, initializer_range=std)).eval()
    _randomize_norms(model)
    model.save_pretrained(path)
    return model


def make_tiny_qwen2(path: Path, seed: int = 0, std: float = 0.15, bias_std: float = 0.5) -> Qwen2ForCausalLM:
    """Random Qwen2 weights; the q/k/v biases (zero at transformers' init) drawn from
    N(0, bias_std^2), so a model that drops them gives visibly different logits."""
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(Qwen2Config(**TINY_QWEN2, initializer_range=std)).eval()
    _randomize_norms(model)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("_proj.bias"):
                param.normal_(0.0, bias_std)
    model.save_pretrained(path)
    return model


def make_batch(n: int = 4, s: int = 17, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, TINY["vocab_size"], (n, s), generator=torch.Generator().manual_seed(seed))
