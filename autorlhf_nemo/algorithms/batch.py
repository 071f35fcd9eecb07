"""Training rows from generations: prompt + response, real tokens first.

A row is its prompt followed by its response, right-padded, so the real tokens of
every row come first (what a padding mask means to Transformer Engine's fused
attention: sequence lengths). Position i of the inputs predicts token i + 1, so the
log-prob of response token t of a row whose prompt has p real tokens is read at
position p - 1 + t: ``response_index`` [b, R]. The models compute logits there only
(models/response_logits.py), so every per-token field of a batch is [b, R], aligned
with the response as the generation engine returns it.
"""

from __future__ import annotations

import torch

from autorlhf_nemo.models.gpt import attention_mask


def response_positions(prompt_mask: torch.Tensor, width: int) -> torch.Tensor:
    """[b, width] input positions whose next token is response token 0..width-1: response
    token t of a row whose prompt has p real tokens is predicted at p - 1 + t."""
    start = prompt_mask.sum(-1, keepdim=True) - 1
    return start + torch.arange(width, device=prompt_mask.device)


def make_sequence_batch(prompt_ids, prompt_mask, response_ids, response_mask, pad_to_multiple_of: int = 1,
                        **per_token) -> dict:
    """Model inputs of prompt + response and the response fields:

        tokens, position_ids [b, S]; attention_mask (the spec's format)
        response_index [b, R]: where each response token is predicted
        response_ids [b, R]; response_mask [b, R] (float); ``per_token`` fields [b, R] as given

    Prompts arrive left-padded [b, P]; each row is shifted left by its padding so that
    it reads prompt, response, padding. S = P + R - 1 (the last response token predicts
    nothing), right-padded up to a multiple of ``pad_to_multiple_of``: sequence
    parallelism needs S divisible by the TP size."""
    prompt_len = prompt_ids.shape[1]
    width = prompt_len + response_ids.shape[1] - 1
    width += -width % pad_to_multiple_of
    tokens = torch.cat([prompt_ids, response_ids], dim=1)
    mask = torch.cat([prompt_mask, response_mask], dim=1)
    # column j of a shifted row is column j + (its prompt padding) of the left-padded one
    columns = torch.arange(width, device=tokens.device) + (prompt_len - prompt_mask.sum(-1, keepdim=True))
    inside = columns < tokens.shape[1]
    columns = columns.clamp(max=tokens.shape[1] - 1)
    real = torch.where(inside, mask.gather(1, columns), 0)
    return {"tokens": torch.where(inside, tokens.gather(1, columns), 0),
            "position_ids": (real.long().cumsum(-1) - 1).clamp(min=0),
            "attention_mask": attention_mask(real),
            "response_index": response_positions(prompt_mask, response_ids.shape[1]),
            "response_ids": response_ids, "response_mask": response_mask.float(), **per_token}
