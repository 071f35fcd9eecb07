"""Tensor-parallel heads on the last pipeline stage's hidden states.

ValueHead (PPO's critic, ILQL's V head):

    v = W2 relu(W1 h + b1) + b2,   h [s, b, H] -> v [s, b, out] fp32

W1 [w, H] (w = 2H unless given) is column-parallel (each TP rank holds w/tp rows),
W2 [out, w] row-parallel (its input columns split alike; the partial products are
summed over TP). Under sequence parallelism h arrives as [s/tp, b, H]: W1 all-gathers
the sequence and W2 reduce-scatters it, so v is gathered back to [s, b, out].

QHead (ILQL's Q heads: a value per vocabulary entry, kept vocab-parallel):

    q = W2 relu(W1 h + b1) + b2,   h [n, b, H] -> q [n, b, V/tp]

W1 [w, H] column-parallel with its output gathered (w wide on every rank), W2 [V, w]
column-parallel without gathering: each TP rank holds its vocabulary slice of q, as
the LM head's logits; no [n, b, V] tensor is ever all-reduced or gathered.

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
                 init_std: float | None = None, width: int | None = None):
        super().__init__(config)
        hidden, inner = config.hidden_size, width or 2 * config.hidden_size
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


class QHead(MegatronModule):
    """h [n, b, H] -> q [n, b, V_pad/tp] fp32 (``config`` without sequence parallelism: the
    caller selects and gathers the positions first). Rows of W2 at and beyond
    ``vocab_size`` (the vocabulary's padding) start at 0; callers mask those columns."""

    def __init__(self, config: TransformerConfig, padded_vocab_size: int, vocab_size: int, width: int,
                 seed: int = 0, init_std: float | None = None):
        super().__init__(config)
        no_init = lambda weight: None
        self.fc1 = ColumnParallelLinear(config.hidden_size, width, config=config, init_method=no_init, bias=True,
                                        gather_output=True)
        self.fc2 = ColumnParallelLinear(width, padded_vocab_size, config=config, init_method=no_init, bias=True,
                                        gather_output=False)
        self._init_weights(seed, config.init_method_std if init_std is None else init_std, vocab_size)

    @torch.no_grad()
    def _init_weights(self, seed: int, std: float, vocab_size: int) -> None:
        if self.fc1.weight.is_meta:
            return
        for index, (layer, valid) in enumerate(((self.fc1, None), (self.fc2, vocab_size))):
            rows = layer.weight.shape[0]                       # this rank's output rows
            start = parallel_state.get_tensor_model_parallel_rank() * rows
            layer.weight.copy_(seeded_rows(2 * seed + index, start, start + rows, layer.weight.shape[1], std, valid))
            layer.bias.zero_()

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        inner, _ = self.fc1(hidden)
        out, _ = self.fc2(torch.relu(inner))
        return out.float()


_INIT_BLOCK = 256


def seeded_rows(seed: int, start: int, stop: int, cols: int, std: float, valid: int | None = None) -> torch.Tensor:
    """Rows start..stop-1 of a [*, cols] N(0, std^2) matrix drawn in blocks of 256 rows, block k from
    its own seed: a TP rank draws only the blocks its rows touch (a 70B vocabulary's Q head is
    never materialised whole), and every TP split sees the same matrix. Rows >= ``valid`` are 0."""
    first, last = start // _INIT_BLOCK, (stop - 1) // _INIT_BLOCK
    blocks = [torch.randn(_INIT_BLOCK, cols, generator=torch.Generator().manual_seed(seed * 1_000_003 + k))
              for k in range(first, last + 1)]
    out = torch.cat(blocks)[start - first * _INIT_BLOCK:stop - first * _INIT_BLOCK] * std
    if valid is not None:
        out[torch.arange(start, stop) >= valid] = 0
    return out
