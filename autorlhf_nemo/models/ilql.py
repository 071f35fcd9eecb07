"""ILQL's policy: the GPTModel (trunk + LM head) and, on the last pipeline stage, the heads

    v_head          h -> w -> 1                       V(s)          (ValueHead)
    q_heads         h -> w -> V, one or two           Q_i(s, .)     (QHead, vocab-parallel)
    target_q_heads  frozen copies of q_heads          Qbar_i(s, .)  Polyak-averaged (``sync_targets``)

in fp32, read from the final-norm hidden states at the positions the loss needs only
(the action positions of a batch, the last position of a decode step).

    forward(tokens, position_ids, attention_mask, index [b, A])
        not last stage:  hidden states [s, b, H]
        last stage:      ILQLOutput: logits [b, A, V/tp], qs / target_qs: lists of [b, A, V/tp], vs [b, A]

The heads' parameters are the policy module's, so Megatron's DDP, optimizer and dist
checkpointing handle them with the trunk's; the target heads do not require grad (no
gradient buffer, no optimizer state) but are saved and loaded with the rest.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from megatron.core import parallel_state
from megatron.core.tensor_parallel import gather_from_sequence_parallel_region
from megatron.core.transformer.module import MegatronModule

from autorlhf_nemo.models.heads import QHead, ValueHead
from autorlhf_nemo.models.policy import PolicyModel
from autorlhf_nemo.models.response_logits import gather_positions, response_logits


@dataclass
class ILQLOutput:
    logits: torch.Tensor               # [b, A, V/tp]
    qs: list[torch.Tensor]             # [b, A, V/tp] fp32 each
    target_qs: list[torch.Tensor]      # [b, A, V/tp] fp32 each, no grad
    vs: torch.Tensor                   # [b, A] fp32


class HeadList(torch.nn.ModuleList):
    """Heads in a list that checkpoint with their own tensor-parallel sharding (Megatron saves a
    plain ModuleList's tensors as replicated over TP: every rank would restore rank 0's slice)."""

    def sharded_state_dict(self, prefix: str = "", sharded_offsets=(), metadata=None) -> dict:
        state = {}
        for i, head in enumerate(self):
            state.update(head.sharded_state_dict(prefix=f"{prefix}{i}.", sharded_offsets=sharded_offsets,
                                                 metadata=metadata))
        return state


class ILQLHeads(MegatronModule):
    def __init__(self, config, padded_vocab_size: int, vocab_size: int, width: int, two_qs: bool, seed: int):
        """``config``: the trunk's; the heads get an fp32, sequence-parallel-free copy (their
        input is the gathered hidden states at the selected positions)."""
        head_config = copy.copy(config)
        head_config.sequence_parallel = False
        head_config.params_dtype = torch.float32
        super().__init__(head_config)
        n_q = 2 if two_qs else 1
        self.v_head = ValueHead(head_config, out_features=1, seed=seed, width=width)
        self.q_heads = HeadList(
            QHead(head_config, padded_vocab_size, vocab_size, width, seed=seed + 1 + i) for i in range(n_q))
        self.target_q_heads = HeadList(
            QHead(head_config, padded_vocab_size, vocab_size, width, seed=seed + 1 + i) for i in range(n_q))
        self.target_q_heads.requires_grad_(False)

    def forward(self, hidden: torch.Tensor):
        """hidden [n, b, H] -> (qs [n, b, V/tp] each, target_qs, vs [n, b])."""
        hidden = hidden.float()
        qs = [q(hidden) for q in self.q_heads]
        with torch.no_grad():
            target_qs = [q(hidden) for q in self.target_q_heads]
        return qs, target_qs, self.v_head(hidden)[..., 0]

    @torch.no_grad()
    def sync_targets(self, alpha: float) -> None:
        """Polyak averaging: target <- alpha q + (1 - alpha) target (this rank's shards)."""
        for target, q in zip(self.target_q_heads, self.q_heads):
            for t, p in zip(target.parameters(), q.parameters()):
                t.mul_(1 - alpha).add_(p.detach().to(t.dtype), alpha=alpha)

    # ------------------------------------------------------------------ decoding
    @torch.no_grad()
    def advantage(self, hidden: torch.Tensor) -> torch.Tensor:
        """min_i Qbar_i(s, .) - V(s) for decode steps: hidden [b, H] (final-norm, replicated over
        TP) -> [b, V/tp] fp32, this rank's vocabulary slice. Plain matmuls on the local shards with
        one all-gather (each Q head's hidden layer) and one all-reduce (V's output) per head."""
        hidden = hidden.float()
        targets = [self._q_local(q, hidden) for q in self.target_q_heads]
        target = targets[0] if len(targets) == 1 else torch.minimum(*targets)
        return target - self._v_local(hidden)[:, None]

    def _q_local(self, head: QHead, hidden: torch.Tensor) -> torch.Tensor:
        inner = all_gather_last(F.linear(hidden, head.fc1.weight, head.fc1.bias))
        return F.linear(torch.relu(inner), head.fc2.weight, head.fc2.bias)

    def _v_local(self, hidden: torch.Tensor) -> torch.Tensor:
        head = self.v_head
        inner = torch.relu(F.linear(hidden, head.fc1.weight, head.fc1.bias))
        out = F.linear(inner, head.fc2.weight)
        if parallel_state.get_tensor_model_parallel_world_size() > 1:
            dist.all_reduce(out, group=parallel_state.get_tensor_model_parallel_group())
        return (out + head.fc2.bias)[:, 0]


def all_gather_last(x: torch.Tensor) -> torch.Tensor:
    """Concatenate the TP ranks' slices of the last dimension."""
    world = parallel_state.get_tensor_model_parallel_world_size()
    if world == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(world)]
    dist.all_gather(parts, x.contiguous(), group=parallel_state.get_tensor_model_parallel_group())
    return torch.cat(parts, dim=-1)


class ILQLPolicyModel(PolicyModel):
    def __init__(self, gpt, vocab_size: int, width: int, two_qs: bool, seed: int):
        super().__init__(gpt, value_head_seed=None)
        self.heads = None
        if gpt.post_process:
            self.heads = ILQLHeads(gpt.config, gpt.vocab_size, vocab_size, width, two_qs, seed).to(
                next(gpt.parameters()).device)

    def forward(self, tokens, position_ids, attention_mask, index, decoder_input=None):
        """``index`` [b, A]: the positions whose logits and head values are returned."""
        captured = []
        hook = self.gpt.decoder.register_forward_hook(lambda module, args, output: captured.append(output))
        try:
            with response_logits(self, index):
                logits = self.gpt(tokens, position_ids, attention_mask, decoder_input=decoder_input)
        finally:
            hook.remove()
        if self.heads is None:
            return logits
        hidden = captured[0]                                   # [s, b, H] (or [s/tp, b, H] under SP)
        if self.gpt.config.sequence_parallel:
            # the heads' first layers all-reduce their input gradient themselves: backward only splits
            hidden = gather_from_sequence_parallel_region(hidden, tensor_parallel_output_grad=False)
        qs, target_qs, vs = self.heads(gather_positions(hidden, index))        # [A, b, ...]
        flip = lambda t: t.transpose(0, 1).contiguous()
        return ILQLOutput(logits, [flip(q) for q in qs], [flip(q) for q in target_qs], flip(vs))
