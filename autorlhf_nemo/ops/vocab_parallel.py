"""Log-probabilities on vocab-parallel logits, never gathering the full vocabulary.

Logits arrive as this TP rank's slice ``[..., V_pad / tp]``.  Columns at and
beyond the real vocabulary size are TP padding: they are set to -inf so that
softmax, log-probs and entropy equal those of the unpadded model.
"""

from __future__ import annotations

import torch
from megatron.core import parallel_state
from megatron.core.tensor_parallel import reduce_from_tensor_model_parallel_region, vocab_parallel_cross_entropy


def mask_padded_vocab(logits: torch.Tensor, vocab_size: int, vocab_start: int | None = None) -> torch.Tensor:
    """Return ``logits`` [..., V_shard] with global columns >= ``vocab_size`` set to -inf.

    ``vocab_start``: global index of this shard's first column (default: TP rank x shard)."""
    shard = logits.shape[-1]
    if vocab_start is None:
        vocab_start = parallel_state.get_tensor_model_parallel_rank() * shard
    if vocab_start + shard <= vocab_size:
        return logits
    columns = torch.arange(vocab_start, vocab_start + shard, device=logits.device)
    return logits.masked_fill(columns >= vocab_size, float("-inf"))


def _scaled(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """fp32 logits / temperature: the distribution sampling drew from (before top-k/top-p)."""
    logits = logits.float()
    return logits if temperature == 1.0 else logits / temperature


def token_log_probs(logits: torch.Tensor, targets: torch.Tensor, vocab_size: int,
                    temperature: float = 1.0) -> torch.Tensor:
    """log softmax(logits / temperature)[target] per position. logits [b, s, V/tp] (this rank's
    slice), targets [b, s] global token ids -> [b, s] (fp32), identical on every TP rank.
    Every log-prob that enters a ratio, a KL or a DPO margin is of the sampled distribution,
    so callers pass the sampling temperature.

    ``logits`` is left unchanged (Megatron's cross entropy works in place on its input)."""
    masked = mask_padded_vocab(_scaled(logits, temperature), vocab_size)
    if masked is logits:
        masked = masked.clone(memory_format=torch.contiguous_format)
    return -vocab_parallel_cross_entropy(masked, targets)


def entropy(logits: torch.Tensor, vocab_size: int, temperature: float = 1.0) -> torch.Tensor:
    """Entropy of softmax(logits / temperature) per position, differentiable, from vocab-parallel
    logits [..., V/tp] -> [...] (fp32), identical on every TP rank:

        H = log Z - sum_v p_v z_v,   Z = sum_v exp(z_v - m), z_v shifted by the global max m

    Only per-row sums cross TP ranks (all-reduce forward, identity backward, as
    every TP rank computes the same loss)."""
    z = mask_padded_vocab(_scaled(logits, temperature), vocab_size)
    group = parallel_state.get_tensor_model_parallel_group()
    with torch.no_grad():
        row_max = z.max(dim=-1, keepdim=True).values
        if parallel_state.get_tensor_model_parallel_world_size() > 1:
            torch.distributed.all_reduce(row_max, op=torch.distributed.ReduceOp.MAX, group=group)
    shifted = z - row_max
    exp = shifted.exp()                                                  # 0 at padding columns
    weighted = exp * torch.where(torch.isfinite(shifted), shifted, torch.zeros_like(shifted))
    sums = reduce_from_tensor_model_parallel_region(torch.stack([exp.sum(-1), weighted.sum(-1)]))
    return sums[0].log() - sums[1] / sums[0]


def pick(values: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """values[..., ids] from this TP rank's vocabulary slice ``values`` [..., V/tp] and global ids
    [...] -> [...], identical on every TP rank; differentiable (each rank's gradient reaches
    the entry it owns: all-reduce forward, identity backward)."""
    shard = values.shape[-1]
    local = ids - parallel_state.get_tensor_model_parallel_rank() * shard
    owned = (local >= 0) & (local < shard)
    picked = values.gather(-1, local.clamp(0, shard - 1)[..., None])[..., 0]
    return reduce_from_tensor_model_parallel_region(torch.where(owned, picked, torch.zeros_like(picked)))
