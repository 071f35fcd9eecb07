"""SFT's loss: the negative log-likelihood of the trained tokens (a completion and its EOS, every
assistant turn of a conversation, every token of a text after the first).

    loss = - sum_{trained tokens t} log pi(y_t | y_<t)  /  N

N is the number of trained tokens of the whole global batch (all micro-batches, all DP ranks):
the function returns the sum and its own token count, and Megatron divides by the global total
(``calculate_per_token_loss``), so micro-batch count, DP size and packing do not change an
update. Its exponential over held-out rows is the perplexity.
"""

from __future__ import annotations

import torch


def sft_loss(logprobs: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """``logprobs`` [b, R] of the trained tokens (0 where ``mask`` [b, R] is 0). Returns (the NLL
    summed over the trained tokens, their number, {}): the loss's own unit is the token."""
    return -(logprobs * mask).sum(), mask.sum(), {}
