"""Next-token language-model loss as a Megatron forward step (used to pretrain and to test layouts)."""

from __future__ import annotations

import torch

from autorlhf_nemo.models.gpt import attention_mask
from autorlhf_nemo.ops.vocab_parallel import token_log_probs


def make_lm_batch(tokens: torch.Tensor, attention_mask_2d: torch.Tensor | None = None) -> dict:
    """Inputs/labels for next-token prediction from ``tokens`` [b, s+1]."""
    inputs, labels = tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()
    if attention_mask_2d is None:
        attention_mask_2d = torch.ones_like(tokens)
    mask = attention_mask_2d[:, :-1]
    return {
        "tokens": inputs,
        "position_ids": (mask.long().cumsum(-1) - 1).clamp(min=0),
        "attention_mask": attention_mask(mask),
        "labels": labels,
        "loss_mask": (mask * attention_mask_2d[:, 1:]).float(),
    }


def lm_forward_step(vocab_size: int):
    """forward_step(batch, model) for the summed next-token NLL and its token count."""

    def forward_step(batch: dict, model):
        output = model(batch["tokens"], batch["position_ids"], batch["attention_mask"])

        def loss_func(logits: torch.Tensor, non_loss_data: bool = False):
            if non_loss_data:
                return logits
            mask = batch["loss_mask"]
            nll = -(token_log_probs(logits, batch["labels"], vocab_size) * mask).sum()
            count = mask.sum()
            return nll, count.int(), {"lm_loss": torch.stack([nll.detach(), count])}

        return output, loss_func

    return forward_step
