"""RLOO as a model module (algorithms/base.py): a KL-penalised sequence reward, the
leave-one-out baseline and a clipped ratio of sequence probabilities (loss.py).

Experience: the sampling policy's log-probs (for the KL penalty and the ratio) and the
reference's (when kl_coef > 0), one forward each."""

from __future__ import annotations

import torch
from megatron.core import parallel_state

from autorlhf_nemo.algorithms.base import OnlineModel
from autorlhf_nemo.algorithms.experience import Rollout
from autorlhf_nemo.algorithms.rloo.loss import rloo_advantages, rloo_loss
from autorlhf_nemo.algorithms.step import policy_forward_step, sequence_sums
from autorlhf_nemo.ops.masked import masked_mean, masked_whiten


class RLOOModel(OnlineModel):
    def make_experience(self, rollout: Rollout) -> tuple[dict, dict]:
        a, g = self.run_cfg.algorithm, rollout.generation
        scores = rollout.sequence_scores
        batch = self.sequence_batch(g)
        policy = self.policy_logprobs(batch)
        ref = self.reference_logprobs(batch)          # None without a reference (kl_coef 0)
        if not parallel_state.is_pipeline_last_stage():
            return batch, {}
        old, weights, off_policy = self.off_policy(g, policy[0], per_sequence=True)
        kl = (old - ref).sum(-1) if ref is not None else torch.zeros_like(scores)
        advantages, rewards = rloo_advantages(scores, kl, rollout.samples_per_prompt, a.kl_coef)
        dp = parallel_state.get_data_parallel_group()
        rows = torch.ones_like(scores)
        if a.whiten_advantages:
            advantages = masked_whiten(advantages, rows, group=dp)
        if weights is not None:  # w * max(-A rho, -A clip(rho)), w per sequence
            advantages = advantages * weights
        batch.update(old_logps=old.sum(-1), advantages=advantages)
        stats = {**self.sample_stats(scores, g), "rlhf_reward": masked_mean(rewards, rows, dp).item(), **off_policy}
        if ref is not None:
            stats["kl"] = masked_mean(kl, rows, dp).item()
        return batch, stats

    def forward_step(self):
        a = self.run_cfg.algorithm

        def loss_fn(logprobs, batch):
            logps = sequence_sums(logprobs, batch["response_mask"])
            loss, count, stats = rloo_loss(logps, batch["old_logps"], batch["advantages"], a.clip_ratio)
            return loss, count, stats

        return policy_forward_step(self.vocab_size, self.temperature, loss_fn)
