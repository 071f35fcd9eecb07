"""Packed rows (several samples laid end to end in one row) under Transformer Engine: the
packed ``thd`` format, in which TE's fused attention and RoPE read each sample's bounds from
cumulative sequence lengths instead of a mask. (The local spec takes a block-diagonal causal
mask instead: data/supervised.collate_sequences.)

    cu_seqlens = [0, n_1, n_1 + n_2, ..., S]      (int32; the padding tail is one more sample)

TE's thd format takes one row per micro-batch (its tokens are the sequence dimension), so a
packed batch runs with train.micro_batch_size=1.
"""

from __future__ import annotations

import torch
from megatron.core.packed_seq_params import PackedSeqParams


def packed_seq_params(cu_seqlens: torch.Tensor) -> PackedSeqParams:
    """The PackedSeqParams of a micro-batch of one packed row; ``cu_seqlens`` [1, K + 1] as
    collate_sequences builds it (-1 after the row's end)."""
    if cu_seqlens.dim() != 2 or cu_seqlens.shape[0] != 1:
        raise ValueError(f"packed rows under Transformer Engine (the thd format) take one row per micro-batch, "
                         f"got {cu_seqlens.shape[0] if cu_seqlens.dim() == 2 else 'no'} rows: set "
                         f"train.micro_batch_size=1 with data.pack=true")
    row = cu_seqlens[0]
    row = row[row >= 0].to(torch.int32)
    longest = int((row[1:] - row[:-1]).max())
    return PackedSeqParams(qkv_format="thd", cu_seqlens_q=row, cu_seqlens_kv=row,
                           max_seqlen_q=longest, max_seqlen_kv=longest)
