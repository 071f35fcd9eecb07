"""PPO's learning step as a Megatron forward step.

A micro-batch holds whole sequences prepared by ``make_sequence_batch`` with the
experience (old log-probs, old values, advantages, returns) [b, R] per response token;
logits (and values) are taken at the response positions only.

loss = policy_loss + vf_coef value_loss - entropy_coef entropy, each a sum over
action tokens; the returned token count lets Megatron divide by the number of
action tokens of the whole minibatch (``calculate_per_token_loss``), so the
loss does not depend on the micro-batch count or the DP size. Log-probs and the
entropy are of softmax(logits / temperature), the distribution that was sampled.
The entropy is always reported; it enters autograd only when ``entropy_coef`` is not 0.
"""

from __future__ import annotations

import torch

from autorlhf_nemo.algorithms.ppo.losses import policy_loss, value_loss
from autorlhf_nemo.models.reference import model_inputs
from autorlhf_nemo.models.response_logits import response_logits
from autorlhf_nemo.ops.vocab_parallel import entropy, token_log_probs


def ppo_forward_step(vocab_size: int, clip_ratio: float, clip_value: float, vf_coef: float,
                     entropy_coef: float = 0.0, temperature: float = 1.0):
    """forward_step(batch, model) for Megatron's schedules; model is a PolicyModel with a value head."""

    def forward_step(batch: dict, model):
        with response_logits(model, batch["response_index"]):
            output = model(batch["tokens"], batch["position_ids"], batch["attention_mask"], **model_inputs(batch))

        def loss_func(output, non_loss_data: bool = False):
            logits, values = output
            mask = batch["response_mask"]
            logprobs = token_log_probs(logits, batch["response_ids"], vocab_size, temperature)
            values = values.gather(1, batch["response_index"])
            pg, pg_stats = policy_loss(logprobs, batch["old_logprobs"], batch["advantages"], mask, clip_ratio)
            vf, vf_stats = value_loss(values, batch["old_values"], batch["returns"], mask, clip_value)
            loss = pg + vf_coef * vf
            with torch.set_grad_enabled(torch.is_grad_enabled() and entropy_coef != 0):
                ent = (entropy(logits, vocab_size, temperature) * mask).sum()  # reported even when not in the loss
            if entropy_coef != 0:
                loss = loss - entropy_coef * ent
            count = mask.sum()
            reports = {"loss": loss.detach(), "policy_loss": pg.detach(), "value_loss": vf.detach(),
                       "entropy": ent.detach(), **{f"policy_{k}": v for k, v in pg_stats.items()},
                       **{f"value_{k}": v for k, v in vf_stats.items()}}
            return loss, count.int(), {k: torch.stack([v.float(), count]) for k, v in reports.items()}

        return output, loss_func

    return forward_step
