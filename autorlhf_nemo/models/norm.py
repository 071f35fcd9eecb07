"""RMSNorm that works under sequence parallelism.

Megatron's local spec falls back to ``torch.nn.RMSNorm`` when apex is absent,
and that wrapper refuses sequence parallelism.  Under SP each TP rank
normalizes a different slice of the sequence, so the norm weight's gradient
is a partial sum: marking the parameter ``sequence_parallel=True`` makes
Megatron's ``finalize_model_grads`` all-reduce it over the TP group.
"""

from __future__ import annotations

import torch
from megatron.core.transformer.transformer_config import TransformerConfig


class RMSNorm(torch.nn.Module):
    """y = x / sqrt(mean(x^2, -1) + eps) * weight, computed in fp32. x: [s, b, h]."""

    def __init__(self, config: TransformerConfig, hidden_size: int, eps: float = 1e-5, **_):
        super().__init__()
        self.eps = eps
        self.weight = torch.nn.Parameter(torch.ones(hidden_size, dtype=config.params_dtype))
        setattr(self.weight, "sequence_parallel", config.sequence_parallel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return (normed * self.weight.float()).to(x.dtype)
