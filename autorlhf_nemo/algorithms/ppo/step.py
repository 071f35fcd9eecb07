"""PPO's learning step as a Megatron forward step.

A micro-batch holds whole sequences (left-padded prompt + right-padded
response) prepared by ``make_ppo_batch``; everything per token is aligned to
the *label* positions of ``make_lm_batch`` (position i predicts token i + 1),
so the policy's log-prob of response token t sits where ``action_mask`` is 1.

loss = policy_loss + vf_coef value_loss - entropy_coef entropy, each a sum over
action tokens; the returned token count lets Megatron divide by the number of
action tokens of the whole minibatch (``calculate_per_token_loss``), so the
loss does not depend on the micro-batch count or the DP size.
"""

from __future__ import annotations

import torch

from autorlhf_nemo.algorithms.ppo.losses import policy_loss, value_loss
from autorlhf_nemo.models.reference import model_inputs
from autorlhf_nemo.ops.vocab_parallel import entropy, token_log_probs
from autorlhf_nemo.training.lm import make_lm_batch


def make_ppo_batch(prompt_ids, prompt_mask, response_ids, response_mask, pad_to_multiple_of: int = 1,
                   **per_token) -> dict:
    """Inputs/labels of prompt + response, ``action_mask`` and the ``per_token``
    fields ([b, R] each, e.g. old_logprobs) placed at label positions [b, S].

    S = P + R - 1, right-padded (masked) up to a multiple of ``pad_to_multiple_of``:
    sequence parallelism needs S divisible by the TP size."""
    b, prompt_len = prompt_ids.shape
    width = prompt_len + response_ids.shape[1] - 1
    extra = -width % pad_to_multiple_of
    width += extra
    sequences = torch.cat([prompt_ids, response_ids, response_ids.new_zeros(b, extra)], dim=1)
    mask = torch.cat([prompt_mask, response_mask, response_mask.new_zeros(b, extra)], dim=1)
    batch = make_lm_batch(sequences, mask)

    def at_labels(x):
        out = torch.zeros(b, width, dtype=torch.float32)
        out[:, prompt_len - 1:prompt_len - 1 + x.shape[1]] = x.float()
        return out

    batch["action_mask"] = at_labels(response_mask)
    for name, value in per_token.items():
        batch[name] = at_labels(value)
    return batch


def ppo_forward_step(vocab_size: int, clip_ratio: float, clip_value: float, vf_coef: float,
                     entropy_coef: float = 0.0):
    """forward_step(batch, model) for Megatron's schedules; model is a PolicyValueModel."""

    def forward_step(batch: dict, model):
        output = model(batch["tokens"], batch["position_ids"], batch["attention_mask"], **model_inputs(batch))

        def loss_func(output, non_loss_data: bool = False):
            logits, values = output
            mask = batch["action_mask"]
            logprobs = token_log_probs(logits, batch["labels"], vocab_size)
            pg, pg_stats = policy_loss(logprobs, batch["old_logprobs"], batch["advantages"], mask, clip_ratio)
            vf, vf_stats = value_loss(values, batch["old_values"], batch["returns"], mask, clip_value)
            loss = pg + vf_coef * vf
            ent = (entropy(logits, vocab_size) * mask).sum()  # reported even when not in the loss
            loss = loss - entropy_coef * ent
            count = mask.sum()
            reports = {"loss": loss.detach(), "policy_loss": pg.detach(), "value_loss": vf.detach(),
                       "entropy": ent.detach(), **{f"policy_{k}": v for k, v in pg_stats.items()},
                       **{f"value_{k}": v for k, v in vf_stats.items()}}
            return loss, count.int(), {k: torch.stack([v.float(), count]) for k, v in reports.items()}

        return output, loss_func

    return forward_step
