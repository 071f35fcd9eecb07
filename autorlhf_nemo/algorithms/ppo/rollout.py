"""Experience for PPO from a batch of generations (trlX's make_experience).

    scores      reward_fn on the decoded samples, once per DP replica (rewards/)
    logprobs    log pi_old(y_t), values V_old(t): one forward of the policy-value model
    ref_logprobs   log pi_ref(y_t): one forward of the frozen reference model
    rewards     -beta (logprobs - ref_logprobs) + score on the last token (shaping.py)
    advantages, returns   GAE, advantages whitened over the DP group (optional)

Per-token tensors are [b, R] over the response (mask = response_mask). The
model forwards run through Megatron's schedules, so they exist on the last
pipeline stage only; other stages hold zeros there (they never read them).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from megatron.core import parallel_state

from autorlhf_nemo.algorithms.ppo.shaping import clip_scores, kl_penalized_rewards
from autorlhf_nemo.algorithms.ppo.step import make_ppo_batch, response_positions
from autorlhf_nemo.models.reference import FrozenTrunk, model_inputs
from autorlhf_nemo.ops.advantages import gae
from autorlhf_nemo.ops.masked import masked_mean, masked_whiten
from autorlhf_nemo.ops.vocab_parallel import token_log_probs
from autorlhf_nemo.training.batching import data_parallel_microbatches
from autorlhf_nemo.training.engine import forward_only


@dataclass
class Experience:
    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    response_ids: torch.Tensor
    response_mask: torch.Tensor
    scores: torch.Tensor        # [b] (or [b, R] dense)
    logprobs: torch.Tensor      # [b, R]
    ref_logprobs: torch.Tensor
    values: torch.Tensor
    kl: torch.Tensor            # logprobs - ref_logprobs (0 where masked)
    rewards: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor
    trunk_hidden: torch.Tensor | None = None  # cached frozen-trunk output [b, S, H] (FrozenTrunk)

    def learner_batch(self, pad_to_multiple_of: int = 1) -> dict:
        batch = make_ppo_batch(self.prompt_ids, self.prompt_mask, self.response_ids, self.response_mask,
                               pad_to_multiple_of, old_logprobs=self.logprobs, old_values=self.values,
                               advantages=self.advantages, returns=self.returns)
        if self.trunk_hidden is not None:
            batch["trunk_hidden"] = self.trunk_hidden
        return batch


def response_forward(model, batch: dict, prompt_mask, response_mask, vocab_size: int,
                     micro_batch_size: int, with_values: bool = True):
    """Log-probs [b, R] (and values [b, R] from a PolicyValueModel) of the response
    tokens of ``batch`` (from make_ppo_batch) on the last stage; None elsewhere."""
    micro = data_parallel_microbatches(batch, 0, 1, micro_batch_size)
    seq = batch["tokens"].shape[1]

    def step(mb, model):
        output = model(mb["tokens"], mb["position_ids"], mb["attention_mask"], **model_inputs(mb))

        def collect(out, non_loss_data=False):
            logits, values = out if with_values else (out, None)
            return token_log_probs(logits, mb["labels"], vocab_size), values

        return output, collect

    outputs = forward_only(model, micro, len(micro), step, seq, micro_batch_size)
    if not parallel_state.is_pipeline_last_stage():
        return None
    positions = response_positions(prompt_mask, response_mask.shape[1])
    mask = response_mask.float()
    logprobs = torch.cat([o[0] for o in outputs]).gather(1, positions) * mask
    values = torch.cat([o[1] for o in outputs]).gather(1, positions) * mask if with_values else None
    return logprobs, values


def make_experience(generation, scores: torch.Tensor, policy, reference, *, vocab_size: int, kl_coef: float,
                    gamma: float, lam: float, micro_batch_size: int, clip_reward: float | None = None,
                    whiten_advantages: bool = True, pad_to_multiple_of: int = 1,
                    trunk: FrozenTrunk | None = None) -> tuple[Experience, dict]:
    """Experience of this DP rank's generations plus rollout statistics
    (means over the DP group): score, kl (summed per sequence), response length.

    ``policy``: the (DDP-wrapped) PolicyValueModel; ``reference``: a GPTModel;
    ``trunk``: compute the shared frozen trunk once for both (and for learning)."""
    g = generation
    mask = g.response_mask
    scores = clip_scores(scores.float(), clip_reward)
    batch = make_ppo_batch(g.prompt_ids, g.prompt_mask, g.response_ids, mask, pad_to_multiple_of)
    trunk_hidden = trunk.hidden(batch, micro_batch_size) if trunk is not None else None
    if trunk_hidden is not None:
        batch["trunk_hidden"] = trunk_hidden
    args = (batch, g.prompt_mask, mask, vocab_size, micro_batch_size)
    with trunk.top(_unwrap(policy).gpt) if trunk else contextlib.nullcontext():
        policy_out = response_forward(policy, *args, with_values=True)
    with trunk.top(reference) if trunk else contextlib.nullcontext():
        reference_out = response_forward(reference, *args, with_values=False)
    dp_group = parallel_state.get_data_parallel_group()
    zeros = torch.zeros(mask.shape, device=mask.device)
    if policy_out is None:  # not the last pipeline stage
        return Experience(g.prompt_ids, g.prompt_mask, g.response_ids, mask, scores, zeros, zeros, zeros,
                          zeros, zeros, zeros, zeros, trunk_hidden), {}
    logprobs, values = policy_out
    ref_logprobs = reference_out[0]
    rewards, kl = kl_penalized_rewards(scores, logprobs, ref_logprobs, mask, kl_coef)
    advantages, returns = gae(rewards, values, mask, gamma, lam)
    if whiten_advantages:
        advantages = masked_whiten(advantages, mask, group=dp_group)
    rows = torch.ones(mask.shape[0], device=mask.device)
    sequence_scores = scores if scores.dim() == 1 else (scores * mask).sum(-1)
    stats = {"score": masked_mean(sequence_scores, rows, dp_group).item(),
             "kl": masked_mean(kl.sum(-1), rows, dp_group).item(),
             "response_length": masked_mean(mask.sum(-1).float(), rows, dp_group).item()}
    return Experience(g.prompt_ids, g.prompt_mask, g.response_ids, mask, scores, logprobs, ref_logprobs,
                      values, kl, rewards, advantages, returns, trunk_hidden), stats


def _unwrap(model):
    return getattr(model, "module", model)
