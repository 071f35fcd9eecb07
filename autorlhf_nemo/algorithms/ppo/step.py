"""PPO's learning step as a Megatron forward step.

A micro-batch holds whole sequences prepared by ``make_ppo_batch``: each row
is its prompt followed by its response, right-padded, so the real tokens of
every row come first. Everything per token is aligned to the *label* positions
of ``make_lm_batch`` (position i predicts token i + 1), so the policy's
log-prob of response token t sits where ``action_mask`` is 1.

loss = policy_loss + vf_coef value_loss - entropy_coef entropy, each a sum over
action tokens; the returned token count lets Megatron divide by the number of
action tokens of the whole minibatch (``calculate_per_token_loss``), so the
loss does not depend on the micro-batch count or the DP size. The entropy is
always reported; it enters autograd only when ``entropy_coef`` is not 0.
"""

from __future__ import annotations

import torch

from autorlhf_nemo.algorithms.ppo.losses import policy_loss, value_loss
from autorlhf_nemo.models.reference import model_inputs
from autorlhf_nemo.ops.vocab_parallel import entropy, token_log_probs
from autorlhf_nemo.training.lm import make_lm_batch


def response_positions(prompt_mask: torch.Tensor, width: int) -> torch.Tensor:
    """[b, width] label positions of the response tokens in a ``make_ppo_batch`` row:
    response token t of a row whose prompt has p real tokens is predicted at p - 1 + t."""
    start = prompt_mask.sum(-1, keepdim=True) - 1
    return start + torch.arange(width, device=prompt_mask.device)


def make_ppo_batch(prompt_ids, prompt_mask, response_ids, response_mask, pad_to_multiple_of: int = 1,
                   **per_token) -> dict:
    """Inputs/labels of prompt + response, ``action_mask`` and the ``per_token``
    fields ([b, R] each, e.g. old_logprobs) placed at label positions [b, S].

    Prompts arrive left-padded [b, P]; each row is shifted left by its padding so that
    it reads prompt, response, padding: the real tokens come first, which is what a
    padding mask means to Transformer Engine's fused attention (sequence lengths).
    S = P + R - 1, right-padded (masked) up to a multiple of ``pad_to_multiple_of``:
    sequence parallelism needs S divisible by the TP size."""
    b, prompt_len = prompt_ids.shape
    response_len = response_ids.shape[1]
    width = prompt_len + response_len - 1
    width += -width % pad_to_multiple_of
    tokens = torch.cat([prompt_ids, response_ids], dim=1)
    mask = torch.cat([prompt_mask, response_mask], dim=1)
    # column j of a shifted row is column j + (its prompt padding) of the left-padded one
    columns = torch.arange(width + 1, device=tokens.device) + (prompt_len - prompt_mask.sum(-1, keepdim=True))
    inside = columns < tokens.shape[1]
    columns = columns.clamp(max=tokens.shape[1] - 1)
    sequences = torch.where(inside, tokens.gather(1, columns), 0)
    batch = make_lm_batch(sequences, torch.where(inside, mask.gather(1, columns), 0))
    positions = response_positions(prompt_mask, response_len)

    def at_labels(x):
        return torch.zeros(b, width, device=x.device).scatter_(1, positions, x.float())

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
            with torch.set_grad_enabled(torch.is_grad_enabled() and entropy_coef != 0):
                ent = (entropy(logits, vocab_size) * mask).sum()  # reported even when not in the loss
            if entropy_coef != 0:
                loss = loss - entropy_coef * ent
            count = mask.sum()
            reports = {"loss": loss.detach(), "policy_loss": pg.detach(), "value_loss": vf.detach(),
                       "entropy": ent.detach(), **{f"policy_{k}": v for k, v in pg_stats.items()},
                       **{f"value_{k}": v for k, v in vf_stats.items()}}
            return loss, count.int(), {k: torch.stack([v.float(), count]) for k, v in reports.items()}

        return output, loss_func

    return forward_step
