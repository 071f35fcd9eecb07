"""Statistics over the valid tokens of padded batches, optionally over a process group.

``mask`` is 1 for tokens that count and 0 for padding; all functions take
``x`` and ``mask`` of the same shape. With ``group`` the sums are all-reduced
first, so every rank of a data-parallel group gets the statistics of the
union of their batches (not the mean of per-rank means).
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def _all_reduce(t: torch.Tensor, group) -> torch.Tensor:
    if group is not None and dist.get_world_size(group) > 1:
        dist.all_reduce(t, group=group)
    return t


def masked_mean(x: torch.Tensor, mask: torch.Tensor, group=None) -> torch.Tensor:
    """sum(x mask) / sum(mask) as a 0-d fp64-accumulated fp32 tensor."""
    sums = torch.stack([(x.double() * mask).sum(), mask.double().sum()])
    sums = _all_reduce(sums, group)
    if sums[1] == 0:
        raise ValueError("masked_mean: the mask selects no element (every response is empty)")
    return (sums[0] / sums[1]).float()


def masked_mean_var(x: torch.Tensor, mask: torch.Tensor, group=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and unbiased variance (Bessel, n - 1) of the masked elements of x."""
    mean = masked_mean(x, mask, group)
    sums = torch.stack([((x.double() - mean.double()) ** 2 * mask).sum(), mask.double().sum()])
    sums = _all_reduce(sums, group)
    n = sums[1]
    if n < 2:
        raise ValueError(f"masked variance needs at least 2 valid elements, got {int(n)}")
    return mean, (sums[0] / (n - 1)).float()


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, group=None, shift_mean: bool = True,
                  eps: float = 1e-8) -> torch.Tensor:
    """(x - mean) / sqrt(var + eps) over the masked elements (mean kept if not
    ``shift_mean``); padding positions come out as 0."""
    mean, var = masked_mean_var(x, mask, group)
    whitened = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask
