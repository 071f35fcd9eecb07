"""The decode matmul y = x W^T, in the form each device runs fastest.

A decode step multiplies a few rows (one token per sequence) by every weight
of the model. cuBLAS runs ``F.linear`` at full speed, so GPUs use it. On CPU
three forms, fastest first (SmolLM2-135M fp32 weights against 8 rows, 2
threads, all 121 matmuls of a step):

* ``PackedWeights``: oneDNN's GEMM on a copy of each weight reordered once
  into its blocked layout (~34 ms). fp32 on CPUs with oneDNN, and bf16 (as an
  fp32 copy) on CPUs without native bf16 GEMM. The copy is
  stale once the weights change: its owner calls ``invalidate`` after every
  update (the PPO module does after each optimizer step and checkpoint load);
* ``(W @ x^T)^T``, "weight first": MKL reads W [out, in] as the left operand
  (~42 ms); used for decode-sized inputs (<= 64 rows);
* ``F.linear`` (~62 ms); prefill-sized inputs are compute-bound and run best
  this way.

Same product, different summation order: results agree to rounding (fp32 ~1e-6).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def weight_first_for(device: torch.device) -> bool:
    """Whether ``linear`` should put the weight first on this device (CPU only)."""
    return device.type == "cpu"


def native_bf16_gemm() -> bool:
    """Whether this CPU multiplies bf16 natively (AVX-512 BF16 / AMX); without it
    PyTorch's bf16 GEMM falls back to a slow path (~3-5x below fp32 on an AVX2 EPYC)."""
    return torch.ops.mkldnn._is_mkldnn_bf16_supported()


def packing_available(device: torch.device, dtype: torch.dtype) -> bool:
    """oneDNN-packed fp32 weights: for fp32 on a CPU build with oneDNN, and for bf16
    on such a CPU without native bf16 GEMM (there an fp32 copy is the fast path)."""
    if device.type != "cpu" or not torch.backends.mkldnn.is_available():
        return False
    return dtype == torch.float32 or (dtype == torch.bfloat16 and not native_bf16_gemm())


# At most this many rows count as a decode step (e.g. 64 sequences x 1 token).
DECODE_ROWS = 64


def linear(x: torch.Tensor, weight: torch.Tensor, weight_first: bool,
           packed: "PackedWeights | None" = None) -> torch.Tensor:
    """x [..., in] @ weight[out, in]^T -> [..., out]; the result may be a strided view."""
    if not x.is_contiguous():
        # The previous weight-first result is a transposed view; CPU bf16 GEMMs on
        # strided inputs take a slow path (5-8x here), a copy of a few rows costs ~nothing.
        x = x.contiguous()
    if packed is not None:
        return packed.linear(x, weight)
    rows = x.reshape(-1, x.shape[-1])
    if not weight_first or rows.shape[0] > DECODE_ROWS:
        return F.linear(x, weight)
    return torch.mm(weight, rows.t()).t().reshape(*x.shape[:-1], weight.shape[0])


class PackedWeights:
    """oneDNN-layout fp32 copies of CPU weights, made on first use of each weight.

    bf16 weights are copied to fp32 and the input upcast: a bf16 GEMM accumulates
    in fp32 too, so only the summation order differs; the output is cast back.
    A copy, not a view: after the weights change (optimizer step, checkpoint
    load) call :meth:`invalidate`, or generation keeps using the old values.
    """

    def __init__(self):
        self._copies: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # id(weight) -> (weight, packed)

    def linear(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        entry = self._copies.get(id(weight))
        if entry is None or entry[0] is not weight:
            fp32 = weight.detach().to(torch.float32)
            entry = (weight, torch.ops.mkldnn._reorder_linear_weight(fp32, DECODE_ROWS))
            self._copies[id(weight)] = entry
        out = torch.ops.mkldnn._linear_pointwise(x.to(torch.float32), entry[1], None, "none", [], "")
        return out.to(x.dtype)

    def invalidate(self, weights=None) -> None:
        """Drop the copies of ``weights`` (an iterable of tensors; None: all of them)."""
        if weights is None:
            self._copies.clear()
            return
        for weight in weights:
            self._copies.pop(id(weight), None)

    def __len__(self) -> int:
        return len(self._copies)
