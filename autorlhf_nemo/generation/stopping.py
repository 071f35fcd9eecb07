"""When a sampled sequence ends: EOS, a stop token sequence or a stop string.

All checks are batched tensor operations on the device, the same on every
rank of a model-parallel group (they see the same tokens). Stop strings use
transformers' ``StopStringCriteria``, which precomputes, per vocabulary token,
where it can sit inside each stop string, so a string split across tokens is
found without decoding any text.
"""

from __future__ import annotations

import torch

from autorlhf_nemo.generation.sampling import SamplingParams


class StopCriteria:
    """``(eos [b], stop [b]) = criteria(response [b, t + 1], t)``: which rows end at step t."""

    def __init__(self, params: SamplingParams, tokenizer, device: torch.device):
        self.min_new_tokens = params.min_new_tokens
        self.eos = torch.tensor(list(params.eos_token_ids), dtype=torch.long, device=device) \
            if params.eos_token_ids else None
        self.sequences = [torch.tensor(list(s), dtype=torch.long, device=device)
                          for s in params.stop_token_sequences]
        self.strings = None
        if params.stop_strings:
            from transformers.generation.stopping_criteria import StopStringCriteria

            self.strings = StopStringCriteria(tokenizer, list(params.stop_strings))

    @property
    def any(self) -> bool:
        return self.eos is not None or bool(self.sequences) or self.strings is not None

    def applies(self, t: int) -> bool:
        """Whether step t can end a sequence (min_new_tokens not reached yet: no)."""
        return self.any and t + 1 >= self.min_new_tokens

    def __call__(self, response: torch.Tensor, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        last = response[:, t]
        eos = torch.isin(last, self.eos) if self.eos is not None else torch.zeros_like(last, dtype=torch.bool)
        stop = torch.zeros_like(eos)
        for sequence in self.sequences:
            if len(sequence) <= t + 1:
                stop |= (response[:, t + 1 - len(sequence):t + 1] == sequence).all(-1)
        if self.strings is not None:
            stop |= self.strings(response[:, :t + 1], None)
        return eos, stop & ~eos
