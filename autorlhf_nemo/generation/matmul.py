"""The decode matmul y = x W^T, in the form each device streams fastest.

A decode step multiplies a few rows (one token per sequence) by every weight
of the model, so its time is how fast the matmul reads the weights. On CPU,
MKL reads W [out, in] markedly faster as the left operand, ``(W @ x^T)^T``,
than as the transposed right operand that ``F.linear`` uses (0.54 GB of
SmolLM2-135M fp32 weights against 8 rows, 2 threads: ~57 ms against ~73 ms;
``bench/generation.py`` shows the end-to-end effect). cuBLAS reads both at
full speed, so GPUs keep ``F.linear``; so do inputs of many rows (a
prefill), which are compute-bound and run best as MKL/oneDNN's usual
``F.linear``. Same product, different summation order: results agree to
rounding (fp32 ~1e-6).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def weight_first_for(device: torch.device) -> bool:
    """Whether ``linear`` should put the weight first on this device (CPU only)."""
    return device.type == "cpu"


# At most this many rows count as a decode step (e.g. 64 sequences x 1 token).
DECODE_ROWS = 64


def linear(x: torch.Tensor, weight: torch.Tensor, weight_first: bool) -> torch.Tensor:
    """x [..., in] @ weight[out, in]^T -> [..., out]; the result may be a strided view."""
    rows = x.reshape(-1, x.shape[-1])
    if not weight_first or rows.shape[0] > DECODE_ROWS:
        return F.linear(x, weight)
    return torch.mm(weight, rows.t()).t().reshape(*x.shape[:-1], weight.shape[0])
