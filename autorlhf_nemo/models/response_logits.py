"""Logits at the response positions only, not at every position of prompt + response.

The RL losses read the policy's log-probs of the sampled response tokens; the output
layer (hidden -> vocabulary, about a fifth of a small model's FLOPs) and everything that
follows it (vocab-parallel log-softmax, the logits' copies) need those positions only. TRL
does the same (``logits_to_keep``). While the context is open, the GPTModel's output layer is
stood in for by one that gathers the hidden states at ``index`` first:

    hidden [s, b, h] (or [s/tp, b, h] under sequence parallelism)
      -> hidden at index^T [R, b, h] -> logits [R, b, V/tp]; GPTModel returns [b, R, V/tp]

Gradients reach the hidden states as the column-parallel output layer's would: summed over
the TP ranks' vocabulary shards (an all-reduce, or the reduce-scatter of the sequence
gather under SP).
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from megatron.core.tensor_parallel import copy_to_tensor_model_parallel_region, gather_from_sequence_parallel_region


class _ResponseOutputLayer(torch.nn.Module):
    """Called as GPTModel calls its output layer: (hidden, weight=, runtime_gather_output=) -> (logits, bias)."""

    def __init__(self, output_layer, index: torch.Tensor):
        super().__init__()
        self.output_layer, self.index = output_layer, index

    def forward(self, hidden, weight=None, runtime_gather_output=None):
        if self.output_layer.sequence_parallel:
            hidden = gather_from_sequence_parallel_region(hidden, tensor_parallel_output_grad=True)
        else:
            hidden = copy_to_tensor_model_parallel_region(hidden)
        selected = gather_positions(hidden, self.index)
        return F.linear(selected, self.output_layer.weight if weight is None else weight), None


def gather_positions(hidden: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """hidden [s, b, h] at the positions ``index`` [b, R] of each row -> [R, b, h]."""
    return hidden.gather(0, index.t()[..., None].expand(-1, -1, hidden.shape[-1]))


def gpt_of(model):
    """The GPTModel inside a (DDP-wrapped) PolicyModel or a bare GPTModel."""
    model = getattr(model, "module", model)
    return getattr(model, "gpt", model)


@contextlib.contextmanager
def response_logits(model, index: torch.Tensor):
    """Within the block, ``model``'s forward returns logits [b, R, V/tp] at the positions
    ``index`` [b, R] (a row's label positions of its response tokens) instead of [b, s, V/tp].
    A no-op on pipeline stages without the output layer."""
    gpt = gpt_of(model)
    if not gpt.post_process:
        yield
        return
    layer = gpt.output_layer
    gpt.output_layer = _ResponseOutputLayer(layer, index)
    try:
        yield
    finally:
        gpt.output_layer = layer
