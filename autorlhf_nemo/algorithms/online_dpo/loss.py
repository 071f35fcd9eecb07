"""Online DPO's pairs and loss (Rafailov et al. 2023; online: Guo et al. 2024).

Each prompt's k samples give one pair: chosen = the highest score, rejected = the
lowest; a pair whose scores tie carries no preference and is dropped (weight 0).
With log-probs summed over the response tokens (of the sampled distribution),

    margin = (log pi(y_c) - log pi_ref(y_c)) - (log pi(y_r) - log pi_ref(y_r))
    sigmoid: loss = -(1 - eps) log sigmoid(beta margin) - eps log sigmoid(-beta margin)
                                                        (DPO; eps > 0: cDPO's label smoothing)
    ipo:     loss = (margin - 1 / (2 beta))^2           (IPO, as TRL's online DPO)

Offline DPO (algorithms/dpo) uses the same loss, on sums or per-token means of the log-probs.

The implicit rewards are beta (log pi - log pi_ref) of each side; their margin's sign
is the preference accuracy.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def preference_pairs(scores: torch.Tensor, samples_per_prompt: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """scores [n * k] (k consecutive samples per prompt) -> (chosen [n], rejected [n]: row indices
    into the n * k samples; tie [n]: True where the chosen and rejected scores are equal)."""
    grouped = scores.reshape(-1, samples_per_prompt)
    first = torch.arange(grouped.shape[0], device=scores.device) * samples_per_prompt
    chosen, rejected = grouped.argmax(dim=1), grouped.argmin(dim=1)
    tie = grouped.max(dim=1).values == grouped.min(dim=1).values
    return first + chosen, first + rejected, tie


def dpo_loss(chosen_logps: torch.Tensor, rejected_logps: torch.Tensor, ref_chosen_logps: torch.Tensor,
             ref_rejected_logps: torch.Tensor, beta: float, loss_type: str = "sigmoid",
             weights: torch.Tensor | None = None, label_smoothing: float = 0.0
             ) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Per-pair inputs [n] (sequence log-probs); ``weights`` [n]: 0 drops a pair (a tie);
    ``label_smoothing``: cDPO's eps (sigmoid only).

    Returns (sum of weighted losses, number of pairs kept, {name: (sum, count)}) with the
    kept pairs' implicit rewards (rewards_chosen, rewards_rejected), their margin and the
    preference accuracy (margin > 0)."""
    weights = torch.ones_like(chosen_logps) if weights is None else weights.float()
    chosen = chosen_logps - ref_chosen_logps
    rejected = rejected_logps - ref_rejected_logps
    margin = chosen - rejected
    if loss_type == "sigmoid":
        losses = -F.logsigmoid(beta * margin) * (1 - label_smoothing) - F.logsigmoid(-beta * margin) * label_smoothing
    elif loss_type == "ipo":
        losses = (margin - 1 / (2 * beta)) ** 2
    else:
        raise ValueError(f"loss_type={loss_type!r}: use 'sigmoid' or 'ipo'")
    kept = weights.sum()
    with torch.no_grad():
        reward_chosen, reward_rejected = beta * chosen, beta * rejected
        stats = {"rewards_chosen": ((reward_chosen * weights).sum(), kept),
                 "rewards_rejected": ((reward_rejected * weights).sum(), kept),
                 "margin": (((reward_chosen - reward_rejected) * weights).sum(), kept),
                 "accuracy": (((reward_chosen > reward_rejected).float() * weights).sum(), kept)}
    return (losses * weights).sum(), kept, stats
