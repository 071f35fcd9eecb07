"""Online DPO as a model module (algorithms/base.py): of each prompt's samples, the
highest-scored is chosen and the lowest rejected (loss.py); a tied pair carries weight 0
and a minibatch of tied pairs only makes no update.

Experience: the reference's log-probs of the chosen and rejected samples (one forward).
The learner rows are (chosen, rejected) per prompt, next to each other, so a pair never
splits across micro-batches (train.micro_batch_size is even)."""

from __future__ import annotations

import torch
from megatron.core import parallel_state

from autorlhf_nemo.algorithms.base import ROW_WEIGHT, OnlineModel
from autorlhf_nemo.algorithms.experience import Rollout
from autorlhf_nemo.algorithms.online_dpo.loss import dpo_loss, preference_pairs
from autorlhf_nemo.algorithms.step import policy_forward_step, sequence_sums
from autorlhf_nemo.ops.masked import masked_mean


class OnlineDPOModel(OnlineModel):
    def make_experience(self, rollout: Rollout) -> tuple[dict, dict]:
        g = rollout.generation
        scores = rollout.sequence_scores
        chosen, rejected, tie = preference_pairs(scores, rollout.samples_per_prompt)
        rows = torch.stack([chosen, rejected], dim=1).flatten()           # c0, r0, c1, r1, ...
        pairs = g.select(rows.tolist())
        batch = self.sequence_batch(pairs)
        batch[ROW_WEIGHT] = (~tie).float().repeat_interleave(2)          # on every stage: skips agree
        ref = self.reference_logprobs(batch)
        if not parallel_state.is_pipeline_last_stage():
            return batch, {}
        batch["ref_logps"] = ref.sum(-1)
        dp = parallel_state.get_data_parallel_group()
        kept = (~tie).float()
        stats = {**self.sample_stats(scores, g), "tie_fraction": masked_mean(tie.float(), torch.ones_like(kept), dp).item()}
        pairs_kept = kept.sum().reshape(1).double()
        torch.distributed.all_reduce(pairs_kept, group=dp)
        if pairs_kept.item() > 0:  # the scores of the pairs that enter the loss
            stats["score_chosen"] = masked_mean(scores[chosen], kept, dp).item()
            stats["score_rejected"] = masked_mean(scores[rejected], kept, dp).item()
        return batch, stats

    def forward_step(self):
        a = self.run_cfg.algorithm

        def loss_fn(logprobs, batch):
            logps = sequence_sums(logprobs, batch["response_mask"])
            ref = batch["ref_logps"]
            loss, count, stats = dpo_loss(logps[0::2], logps[1::2], ref[0::2], ref[1::2], a.beta, a.loss_type,
                                          batch[ROW_WEIGHT][0::2])
            stats["sequence_kl"] = ((logps - ref).detach().sum(), logps.shape[0])
            return loss, count, stats

        return policy_forward_step(self.vocab_size, self.temperature, loss_fn)
