"""A static key/value cache for this rank's decoder layers (its PP stage, its TP heads)."""

from __future__ import annotations

import torch


class KVCache:
    """keys/values [layers, b, kv_heads_local, max_len, d]; ``length`` tokens filled."""

    def __init__(self, layers: int, batch: int, kv_heads: int, max_len: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device):
        shape = (layers, batch, kv_heads, max_len, head_dim)
        self.keys = torch.zeros(shape, dtype=dtype, device=device)
        self.values = torch.zeros(shape, dtype=dtype, device=device)
        self.length = 0

    def append(self, layer: int, key: torch.Tensor, value: torch.Tensor):
        """Store key/value [b, kv_heads, s, d] after the filled part; return the
        whole filled keys/values of ``layer`` including them."""
        end = self.length + key.shape[2]
        self.keys[layer, :, :, self.length:end] = key
        self.values[layer, :, :, self.length:end] = value
        return self.keys[layer, :, :, :end], self.values[layer, :, :, :end]

    def advance(self, steps: int) -> None:
        self.length += steps

    def repeat_rows(self, repeats: int) -> None:
        """Each row ``repeats`` times in a row (row i becomes rows i*repeats .. i*repeats +
        repeats - 1): the samples of a prompt share the keys/values of its one prefill."""
        if repeats > 1:
            self.keys = self.keys.repeat_interleave(repeats, dim=1)
            self.values = self.values.repeat_interleave(repeats, dim=1)
