"""Split a global batch into this data-parallel rank's micro-batches."""

from __future__ import annotations

from typing import Any

import torch


def data_parallel_microbatches(batch: dict[str, Any], dp_rank: int, dp_size: int,
                               micro_batch_size: int) -> list[dict[str, Any]]:
    """Rows ``[dp_rank * n/dp, (dp_rank+1) * n/dp)`` of every tensor in ``batch``
    (first dim = sample), cut into micro-batches of ``micro_batch_size``."""
    n = next(v.shape[0] for v in batch.values() if isinstance(v, torch.Tensor))
    if n % (dp_size * micro_batch_size):
        raise ValueError(
            f"global batch of {n} samples is not divisible by data-parallel size {dp_size} x "
            f"micro-batch size {micro_batch_size}")
    per_rank = n // dp_size
    start = dp_rank * per_rank
    return [
        {k: (v[i:i + micro_batch_size] if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
        for i in range(start, start + per_rank, micro_batch_size)
    ]


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """``batch`` with every tensor on ``device`` (non-blocking copies from the host)."""
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
