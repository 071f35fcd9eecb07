"""PPO's clipped objectives (Schulman et al. 2017) as per-token sums.

Every function returns the *sum* over valid tokens; the caller divides by the
number of valid tokens of the whole minibatch (across micro-batches and DP
ranks, which Megatron does with ``calculate_per_token_loss``), so the loss
does not depend on how the minibatch is split. Shapes: [b, R], mask 1 on
response tokens.
"""

from __future__ import annotations

import torch


def policy_loss(logprobs, old_logprobs, advantages, mask, clip_ratio: float):
    """sum_t max(-A_t rho_t, -A_t clip(rho_t, 1 - eps, 1 + eps)),  rho_t = exp(logp_t - old_logp_t).

    Returns (loss_sum, stats) with stats sums: approx_kl = (rho - 1) - log rho
    (Schulman's k3 estimator of KL(old || new)), clipfrac, ratio."""
    mask = mask.float()
    log_ratio = (logprobs - old_logprobs) * mask
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_ratio, 1.0 + clip_ratio)
    loss_sum = (torch.maximum(unclipped, clipped) * mask).sum()
    with torch.no_grad():
        stats = {
            "approx_kl": (((ratio - 1) - log_ratio) * mask).sum(),
            "clipfrac": ((clipped > unclipped).float() * mask).sum(),
            "ratio": (ratio * mask).sum(),
        }
    return loss_sum, stats


def value_loss(values, old_values, returns, mask, clip_value: float):
    """sum_t 0.5 max((V_t - R_t)^2, (clip(V_t, V_old - c, V_old + c) - R_t)^2).

    Returns (loss_sum, stats) with stats sums: clipfrac, error (squared)."""
    mask = mask.float()
    clipped_values = torch.clamp(values, old_values - clip_value, old_values + clip_value)
    unclipped = (values - returns) ** 2
    clipped = (clipped_values - returns) ** 2
    loss_sum = 0.5 * (torch.maximum(unclipped, clipped) * mask).sum()
    with torch.no_grad():
        stats = {"clipfrac": ((clipped > unclipped).float() * mask).sum(),
                 "error": (unclipped * mask).sum()}
    return loss_sum, stats
