"""PPO's experience from a step's samples (trlX's make_experience).

    logprobs    log pi_old(y_t), values V_old(t): one forward of the policy-value model
    ref_logprobs   log pi_ref(y_t): one forward of the frozen reference model
    rewards     -beta (logprobs - ref_logprobs) + score on the last token (shaping.py)
    advantages, returns   GAE, advantages whitened over the DP group (optional)

Per-token tensors are [b, R] over the response (mask = response_mask). The forwards
(algorithms/base.py) exist on the last pipeline stage only; ``ppo_experience`` runs there.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from megatron.core import parallel_state

from autorlhf_nemo.algorithms.ppo.shaping import clip_scores, kl_penalized_rewards
from autorlhf_nemo.ops.advantages import gae
from autorlhf_nemo.ops.masked import masked_mean, masked_whiten


@dataclass
class Experience:
    scores: torch.Tensor        # [b] (or [b, R] dense)
    logprobs: torch.Tensor      # [b, R]
    ref_logprobs: torch.Tensor
    values: torch.Tensor
    kl: torch.Tensor            # logprobs - ref_logprobs (0 where masked)
    rewards: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor

    def per_token(self) -> dict:
        """The fields the learning step reads, [b, R] each."""
        return {"old_logprobs": self.logprobs, "old_values": self.values, "advantages": self.advantages,
                "returns": self.returns}


def ppo_experience(scores: torch.Tensor, mask: torch.Tensor, logprobs: torch.Tensor, values: torch.Tensor,
                   ref_logprobs: torch.Tensor, *, kl_coef: float, gamma: float, lam: float,
                   clip_reward: float | None = None, whiten_advantages: bool = True) -> tuple[Experience, dict]:
    """Experience of this DP rank's samples plus rollout statistics (means over the DP group):
    score, kl (summed per sequence), response length. ``mask``: the response mask [b, R]."""
    dp_group = parallel_state.get_data_parallel_group()
    scores = clip_scores(scores.float(), clip_reward)
    rewards, kl = kl_penalized_rewards(scores, logprobs, ref_logprobs, mask, kl_coef)
    advantages, returns = gae(rewards, values, mask, gamma, lam)
    if whiten_advantages:
        advantages = masked_whiten(advantages, mask, group=dp_group)
    rows = torch.ones(mask.shape[0], device=mask.device)
    sequence_scores = scores if scores.dim() == 1 else (scores * mask).sum(-1)
    stats = {"score": masked_mean(sequence_scores, rows, dp_group).item(),
             "kl": masked_mean(kl.sum(-1), rows, dp_group).item(),
             "response_length": masked_mean(mask.sum(-1).float(), rows, dp_group).item()}
    return Experience(scores, logprobs, ref_logprobs, values, kl, rewards, advantages, returns), stats
