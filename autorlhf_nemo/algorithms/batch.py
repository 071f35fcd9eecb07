"""Training rows from generations: prompt + response, real tokens first.

A row is its prompt followed by its response, right-padded, so the real tokens of
every row come first (what a padding mask means to Transformer Engine's fused
attention: sequence lengths). Everything per token is aligned to the *label*
positions of ``make_lm_batch`` (position i predicts token i + 1), so the policy's
log-prob of response token t sits where ``action_mask`` is 1.
"""

from __future__ import annotations

import torch

from autorlhf_nemo.training.lm import make_lm_batch


def response_positions(prompt_mask: torch.Tensor, width: int) -> torch.Tensor:
    """[b, width] label positions of the response tokens in a ``make_sequence_batch`` row:
    response token t of a row whose prompt has p real tokens is predicted at p - 1 + t."""
    start = prompt_mask.sum(-1, keepdim=True) - 1
    return start + torch.arange(width, device=prompt_mask.device)


def make_sequence_batch(prompt_ids, prompt_mask, response_ids, response_mask, pad_to_multiple_of: int = 1,
                        **per_token) -> dict:
    """Inputs/labels of prompt + response, ``action_mask`` and the ``per_token``
    fields ([b, R] each, e.g. old_logprobs) placed at label positions [b, S].

    Prompts arrive left-padded [b, P]; each row is shifted left by its padding so that
    it reads prompt, response, padding. S = P + R - 1, right-padded (masked) up to a
    multiple of ``pad_to_multiple_of``: sequence parallelism needs S divisible by the TP size."""
    prompt_len = prompt_ids.shape[1]
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
    batch["action_mask"] = at_labels(response_mask, prompt_mask, width)
    for name, value in per_token.items():
        batch[name] = at_labels(value, prompt_mask, width)
    return batch


def at_labels(per_response: torch.Tensor, prompt_mask: torch.Tensor, width: int) -> torch.Tensor:
    """[b, R] values of the response tokens -> [b, width] at their label positions (fp32, 0 elsewhere)."""
    positions = response_positions(prompt_mask, per_response.shape[1])
    return torch.zeros(per_response.shape[0], width, device=per_response.device).scatter_(
        1, positions, per_response.float())


def at_responses(per_label: torch.Tensor, prompt_mask: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """[b, S] values at label positions -> [b, R] values of the response tokens (0 where masked)."""
    positions = response_positions(prompt_mask, response_mask.shape[1])
    return per_label.gather(1, positions) * response_mask.float()
