"""The learning step of algorithms without a value head, as a Megatron forward step.

A micro-batch holds whole rows of ``make_sequence_batch`` (prompt, response, padding)
with the algorithm's fields; the policy's log-probs of its response tokens under the
sampled distribution, softmax(logits / temperature), [b, R] (logits computed at those
positions only), go to the algorithm's loss, a pure function

    loss_fn(logprobs [b, R], batch) -> (loss_sum, count, {name: (sum, count)})

``count`` is the loss's own unit (tokens, sequences, pairs): Megatron divides the
accumulated gradients by its total over the minibatch and the DP group
(``calculate_per_token_loss``), so micro-batch count and DP size do not change the
update. Every report is a (sum, count) pair, averaged the same way; ``loss`` is reported too.
"""

from __future__ import annotations

from typing import Callable

import torch

from autorlhf_nemo.models.reference import model_inputs
from autorlhf_nemo.models.response_logits import response_logits
from autorlhf_nemo.ops.vocab_parallel import token_log_probs

LossFn = Callable[[torch.Tensor, dict], tuple]


def policy_forward_step(vocab_size: int, temperature: float, loss_fn: LossFn):
    """forward_step(batch, model) for Megatron's schedules; model is a PolicyModel without a head."""

    def forward_step(batch: dict, model):
        with response_logits(model, batch["response_index"]):
            output = model(batch["tokens"], batch["position_ids"], batch["attention_mask"], **model_inputs(batch))

        def loss_func(logits, non_loss_data: bool = False):
            logprobs = token_log_probs(logits, batch["response_ids"], vocab_size, temperature) * batch["response_mask"]
            return megatron_loss(*loss_fn(logprobs, batch))

        return output, loss_func

    return forward_step


def megatron_loss(loss: torch.Tensor, count, reports: dict):
    """A loss function's (sum, count, {name: (sum, count)}) as Megatron's schedules take it:
    (loss sum, count, {name: tensor([sum, count])}), ``loss`` reported too."""
    reports = {"loss": (loss, count), **reports}

    def pair(total, n):  # [sum, count] as Megatron's reports carry them
        return torch.stack([total.detach().float(), torch.as_tensor(n, dtype=torch.float32, device=total.device)])

    return loss, pair(loss, count)[1].int(), {name: pair(*report) for name, report in reports.items()}


def sequence_sums(per_token: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[b, R] per-token values -> [b] sums over each row's response tokens (``mask``: response_mask)."""
    return (per_token * mask).sum(-1)
