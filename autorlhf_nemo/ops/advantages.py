"""Generalized advantage estimation (Schulman et al. 2016) on right-padded responses.

For one sequence with per-token rewards r_t and values V_t (t < T, the
response length), V_T = 0 (the episode ends with the response):

    delta_t = r_t + gamma V_{t+1} - V_t
    A_t     = delta_t + gamma lambda A_{t+1}       (A_T = 0)
    R_t     = A_t + V_t                            (the value target)

All tensors are [b, R]; ``mask`` [b, R] is 1 on response tokens (a prefix of
each row). Padding positions get A = R = 0.
"""

from __future__ import annotations

import torch


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float,
        lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (advantages, returns), both [b, R] fp32."""
    if rewards.shape != values.shape or rewards.shape != mask.shape:
        raise ValueError(f"gae: rewards {tuple(rewards.shape)}, values {tuple(values.shape)} and mask "
                         f"{tuple(mask.shape)} must have the same [batch, response] shape")
    mask = mask.float()
    rewards, values = rewards.float() * mask, values.float() * mask
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        next_value = values[:, t + 1] if t + 1 < rewards.shape[1] else torch.zeros_like(running)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = (delta + gamma * lam * running) * mask[:, t]
        advantages[:, t] = running
    return advantages, (advantages + values) * mask
