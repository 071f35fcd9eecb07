"""RLOO's advantages and loss (Ahmadian et al. 2024; the asynchronous-RLHF paper's code,
TRL's RLOOTrainer).

Per sample i of a prompt's k samples, with sequence log-probs summed over the response:

    r_i = score_i - kl_coef * sum_t (log pi_old(y_t) - log pi_ref(y_t))
    A_i = r_i - (sum_j r_j - r_i) / (k - 1)              (leave-one-out baseline)
    rho_i = exp(log pi(y_i) - log pi_old(y_i))           (a ratio of sequence probabilities)
    loss_i = max(-A_i rho_i, -A_i clip(rho_i, 1 - eps, 1 + eps))
"""

from __future__ import annotations

import torch


def rloo_advantages(scores: torch.Tensor, kl: torch.Tensor, samples_per_prompt: int,
                    kl_coef: float) -> tuple[torch.Tensor, torch.Tensor]:
    """scores, kl [n * k] (kl: sum_t log pi_old - log pi_ref per sample) -> (advantages, rewards r) [n * k]."""
    rewards = scores.float() - kl_coef * kl.float()
    grouped = rewards.reshape(-1, samples_per_prompt)
    baseline = (grouped.sum(dim=1, keepdim=True) - grouped) / (samples_per_prompt - 1)
    return (grouped - baseline).flatten(), rewards


def rloo_loss(logps: torch.Tensor, old_logps: torch.Tensor, advantages: torch.Tensor,
              clip_ratio: float) -> tuple[torch.Tensor, int, dict]:
    """Sequence log-prob sums ``logps`` (current), ``old_logps`` (sampling policy) and
    ``advantages``, all [b]. Returns (sum of per-sequence losses, b, {name: (sum, count)}):
    ratio, clipfrac (the clipped branch was taken), approx_kl ((rho - 1) - log rho)."""
    log_ratio = logps - old_logps
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_ratio, 1.0 + clip_ratio)
    n = logps.shape[0]
    with torch.no_grad():
        stats = {"ratio": (ratio.sum(), n), "clipfrac": ((clipped > unclipped).float().sum(), n),
                 "approx_kl": (((ratio - 1) - log_ratio).sum(), n)}
    return torch.maximum(unclipped, clipped).sum(), n, stats
