"""Tensor-parallel heads on the last pipeline stage's hidden states.

ValueHead (PPO's critic; ILQL's Q/V heads reuse it with more outputs):

    v = W2 relu(W1 h + b1) + b2,   h [s, b, H] -> v [s, b, out] fp32

W1 [2H, H] is column-parallel (each TP rank holds 2H/tp rows), W2 [out, 2H]
row-parallel (its input columns split alike; the partial products are summed
over TP). Under sequence parallelism h arrives as [s/tp, b, H]: W1 all-gathers
the sequence and W2 reduce-scatters it, so v is gathered back to [s, b, out].

Initial weights are drawn in full from a generator seeded by ``seed`` and then
sliced per rank, so every TP/PP layout starts from the same head.
"""

from __future__ import annotations

import torch
from megatron.core import parallel_state
from megatron.core.tensor_parallel import (ColumnParallelLinear, RowParallelLinear,
                                           gather_from_sequence_parallel_region)
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.transformer_config import TransformerConfig


class ValueHead(MegatronModule):
    def __init__(self, config: TransformerConfig, out_features: int = 1, seed: int = 0,
                 init_std: float | None = None):
        super().__init__(config)
        hidden, inner = config.hidden_size, 2 * config.hidden_size
        no_init = lambda weight: None  # weights are set below from the full matrices
        self.fc1 = ColumnParallelLinear(hidden, inner, config=config, init_method=no_init, bias=True,
                                        gather_output=False)
        self.fc2 = RowParallelLinear(inner, out_features, config=config, init_method=no_init, bias=True,
                                     input_is_parallel=True, skip_bias_add=False)
        self._init_weights(seed, config.init_method_std if init_std is None else init_std)

    @torch.no_grad()
    def _init_weights(self, seed: int, std: float) -> None:
        if self.fc1.weight.is_meta:  # shapes only (the planner)
            return
        gen = torch.Generator().manual_seed(seed)
        tp = parallel_state.get_tensor_model_parallel_world_size()
        rank = parallel_state.get_tensor_model_parallel_rank()
        w1 = torch.randn(self.fc1.output_size, self.fc1.input_size, generator=gen) * std
        w2 = torch.randn(self.fc2.output_size, self.fc2.input_size, generator=gen) * std
        self.fc1.weight.copy_(w1.chunk(tp, dim=0)[rank])
        self.fc2.weight.copy_(w2.chunk(tp, dim=1)[rank])
        self.fc1.bias.zero_()
        self.fc2.bias.zero_()

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        inner, _ = self.fc1(hidden)
        out, _ = self.fc2(torch.relu(inner))
        if self.config.sequence_parallel:
            # every TP rank computes the same loss on the full [s, b]: backward keeps the local slice
            out = gather_from_sequence_parallel_region(out, tensor_parallel_output_grad=False)
        return out.float()
