"""From scores to per-token PPO rewards: clipping, scaling and the KL penalty.

    r_t = -beta (log pi(y_t) - log pi_ref(y_t)) + s_t

where s_t is the reward function's score: a sequence score lands on the last
response token, per-token scores (dense rewards) on their tokens. Shapes
[b, R] with ``mask`` 1 on response tokens; scores [b] or [b, R].
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def clip_scores(scores: torch.Tensor, clip: float | None) -> torch.Tensor:
    return scores if clip is None else scores.clamp(-clip, clip)


def place_scores(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[b] sequence scores onto the last valid token of each row; [b, R] kept (masked)."""
    mask = mask.float()
    if scores.dim() == 2:
        return scores.float() * mask
    lengths = mask.sum(-1).long()
    if (lengths == 0).any():
        raise ValueError("a response with no tokens cannot carry a score")
    placed = torch.zeros_like(mask)
    placed[torch.arange(len(scores), device=mask.device), lengths - 1] = scores.float()
    return placed


def kl_penalized_rewards(scores, logprobs, ref_logprobs, mask, kl_coef: float):
    """Returns (rewards [b, R], kl [b, R]) with kl_t = log pi - log pi_ref (the k1 estimator)."""
    mask = mask.float()
    kl = (logprobs - ref_logprobs) * mask
    return place_scores(scores, mask) - kl_coef * kl, kl


class RunningMoments:
    """Mean and std of every score seen so far (merged over the DP group with
    Chan et al.'s parallel update), for ``scale_reward: running``: scores / std."""

    def __init__(self):
        self.mean, self.var, self.count = 0.0, 1.0, 0

    def update(self, scores: torch.Tensor, group=None) -> None:
        scores = scores.double()
        stats = torch.stack([scores.sum(), (scores ** 2).sum(), scores.new_tensor(float(scores.numel()))])
        if group is not None and dist.get_world_size(group) > 1:
            dist.all_reduce(stats, group=group)
        total, squares, n = stats.tolist()
        if n == 0:
            return
        batch_mean = total / n
        batch_var = max(squares / n - batch_mean ** 2, 0.0)
        merged = self.count + n
        delta = batch_mean - self.mean
        m2 = self.var * self.count + batch_var * n + delta ** 2 * self.count * n / merged
        self.mean, self.var, self.count = self.mean + delta * n / merged, m2 / merged, merged

    @property
    def std(self) -> float:
        return max(self.var, 1e-12) ** 0.5

    def state_dict(self) -> dict:
        return {"mean": self.mean, "var": self.var, "count": self.count}

    def load_state_dict(self, state: dict) -> None:
        self.mean, self.var, self.count = state["mean"], state["var"], state["count"]
