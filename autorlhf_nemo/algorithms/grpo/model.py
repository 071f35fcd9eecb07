"""GRPO as a model module (algorithms/base.py): group-normalised advantages, a per-token
clipped ratio and the k3 KL to the reference in the loss (loss.py).

Experience: reference log-probs (when beta > 0) and, only when the step makes more than
one update, the sampling policy's log-probs (one forward each); with one update per
step the policy at the update is the sampling policy, so its log-probs, detached, are
the old ones (as TRL does)."""

from __future__ import annotations

import torch
from megatron.core import parallel_state

from autorlhf_nemo.algorithms.base import OnlineModel
from autorlhf_nemo.algorithms.experience import Rollout
from autorlhf_nemo.algorithms.grpo.loss import grpo_advantages, grpo_loss
from autorlhf_nemo.algorithms.step import policy_forward_step, sequence_sums
from autorlhf_nemo.ops.masked import masked_mean


class GRPOModel(OnlineModel):
    def make_experience(self, rollout: Rollout) -> tuple[dict, dict]:
        a, g = self.run_cfg.algorithm, rollout.generation
        scores = rollout.sequence_scores
        advantages, zero_std = grpo_advantages(scores, rollout.samples_per_prompt, a.epsilon, a.scale_rewards)
        batch = self.sequence_batch(g)
        batch["advantages"] = advantages
        # the split placement needs the learner's own log-probs too (base.off_policy)
        recompute = self.updates_per_step > 1 or self.run_cfg.rollout.placement == "split"
        policy = self.policy_logprobs(batch) if recompute else None
        ref = self.reference_logprobs(batch)          # None without a reference (beta 0)
        if not parallel_state.is_pipeline_last_stage():
            return batch, {}
        old, weights, off_policy = self.off_policy(g, policy[0]) if policy is not None else (None, None, {})
        if weights is not None:  # per token: w * clipped objective; advantages [b] -> [b, R]
            batch["advantages"] = advantages[:, None] * weights
        batch.update({k: v for k, v in (("ref_logprobs", ref), ("old_logprobs", old)) if v is not None})
        dp = parallel_state.get_data_parallel_group()
        rows = torch.ones_like(scores)
        stats = {**self.sample_stats(scores, g),
                 "zero_std_fraction": masked_mean(zero_std.float(), torch.ones_like(zero_std.float()), dp).item(),
                 **off_policy}
        if ref is not None and old is not None:
            stats["kl"] = masked_mean((old - ref).sum(-1), rows, dp).item()
        return batch, stats

    def forward_step(self):
        a = self.run_cfg.algorithm

        def loss_fn(logprobs, batch):
            mask = batch["response_mask"]
            old = batch["old_logprobs"] if "old_logprobs" in batch else logprobs.detach()
            ref = batch.get("ref_logprobs")
            loss, count, stats = grpo_loss(logprobs, old, ref, batch["advantages"], mask, a.clip_low, a.clip_high,
                                           a.beta, a.loss_aggregation)
            if ref is not None:
                stats["sequence_kl"] = (sequence_sums((logprobs - ref).detach(), mask).sum(), mask.shape[0])
            return loss, count, stats

        return policy_forward_step(self.vocab_size, self.temperature, loss_fn)
