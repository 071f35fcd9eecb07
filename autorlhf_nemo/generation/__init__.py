"""Megatron-native autoregressive generation: KV cache, TP/PP aware, vocab-parallel sampling."""

from autorlhf_nemo.generation.engine import GenerationOutput, Generator
from autorlhf_nemo.generation.sampling import SamplingParams

__all__ = ["GenerationOutput", "Generator", "SamplingParams"]
