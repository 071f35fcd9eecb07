"""GRPO's advantages and loss (Shao et al. 2024), with DAPO's options (Yu et al. 2025):
clip-higher (separate lower and upper clip ranges) and token-level aggregation.

Per prompt, over its k samples' scores r:

    A_i = (r_i - mean(r)) / (std(r) + epsilon)      (unbiased std; scale_rewards=false: r_i - mean(r))

Per response token t, with rho_t = exp(log pi(y_t) - log pi_old(y_t)) and the k3 estimate of
KL(pi || pi_ref), kl_t = exp(log pi_ref - log pi) - (log pi_ref - log pi) - 1 (>= 0):

    l_t = -min(rho_t A, clip(rho_t, 1 - clip_low, 1 + clip_high) A) + beta kl_t

aggregated per token (token: sum over every token of the minibatch / its token count) or
per sequence (sequence: each sample's mean over its tokens, then the mean over samples).
"""

from __future__ import annotations

import torch


def grpo_advantages(scores: torch.Tensor, samples_per_prompt: int, epsilon: float = 1e-4,
                    scale_rewards: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """scores [n * k] -> (advantages [n * k], zero_std [n]: the prompt's scores all tie)."""
    grouped = scores.float().reshape(-1, samples_per_prompt)
    std = grouped.std(dim=1, keepdim=True)  # unbiased
    advantages = grouped - grouped.mean(dim=1, keepdim=True)
    if scale_rewards:
        advantages = advantages / (std + epsilon)
    zero_std = grouped.max(dim=1).values == grouped.min(dim=1).values
    return advantages.flatten(), zero_std


def grpo_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, ref_logprobs: torch.Tensor | None,
              advantages: torch.Tensor, mask: torch.Tensor, clip_low: float, clip_high: float, beta: float,
              aggregation: str = "token") -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Per-token log-probs [b, T] (current, sampling policy, reference: None when beta = 0),
    advantages [b] (or [b, T]: weighted per token), mask [b, T] (1 on response tokens).

    Returns (loss sum, count, {name: (sum, count)}): count is the minibatch's token count
    (aggregation=token) or its number of samples (sequence); reports per token: ratio,
    clip_low / clip_high (fractions clipped below where A < 0, above where A > 0), kl."""
    mask = mask.float()
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    adv = advantages[:, None] if advantages.dim() == 1 else advantages  # per sequence, or per token
    per_token = -torch.minimum(ratio * adv, torch.clamp(ratio, 1 - clip_low, 1 + clip_high) * adv)
    kl = None
    if beta != 0:
        # only response tokens: elsewhere the log-probs are not of sampled tokens and exp() could overflow
        delta = torch.where(mask.bool(), ref_logprobs - logprobs, 0.0)
        kl = torch.exp(delta) - delta - 1
        per_token = per_token + beta * kl
    tokens = mask.sum()
    if aggregation == "token":
        loss, count = (per_token * mask).sum(), tokens
    elif aggregation == "sequence":
        loss = ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).sum()
        count = torch.tensor(float(mask.shape[0]), device=mask.device)
    else:
        raise ValueError(f"aggregation={aggregation!r}: use 'token' or 'sequence'")
    with torch.no_grad():
        stats = {"ratio": ((ratio * mask).sum(), tokens),
                 "clip_low": ((((ratio < 1 - clip_low) & (adv < 0)).float() * mask).sum(), tokens),
                 "clip_high": ((((ratio > 1 + clip_high) & (adv > 0)).float() * mask).sum(), tokens)}
        if kl is not None:
            stats["kl"] = ((kl * mask).sum(), tokens)
    return loss, count, stats
