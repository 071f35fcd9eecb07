"""The frozen reference model of KL-regularised RL, sharing the policy's frozen trunk.

trlX's "hydra" layout: with ``num_layers_unfrozen = k`` (0 <= k < num_layers)
only the policy's top k decoder layers (plus final norm and, when untied,
the output layer) are trained. Everything below them is frozen in the policy
and *is* the reference's trunk: the reference model holds the very same
module objects, so the trunk is stored once; only the top k layers, final
norm and output layer are separate frozen copies.

With ``k = -1`` (or k >= num_layers) every policy layer trains and the
reference is a full frozen copy, optionally parked in CPU memory between
uses (``offload``) on GPU runs.

Works per pipeline stage: each stage shares the frozen layers it holds
(global layer number < num_layers - k).
"""

from __future__ import annotations

import contextlib

import torch

from autorlhf_nemo.models.gpt import build_model


def _global_layer_number(layer) -> int:
    return layer.layer_number - 1  # Megatron numbers layers from 1, globally across stages


def freeze_trunk(policy_gpt, num_layers_unfrozen: int) -> int:
    """Freeze the embedding and all but the top ``num_layers_unfrozen`` layers of
    ``policy_gpt`` (before DDP wraps it). Returns how many local layers froze."""
    total = policy_gpt.config.num_layers
    if num_layers_unfrozen < 0 or num_layers_unfrozen >= total:
        return 0
    frozen = 0
    if policy_gpt.pre_process:
        policy_gpt.embedding.requires_grad_(False)
    for layer in policy_gpt.decoder.layers:
        if _global_layer_number(layer) < total - num_layers_unfrozen:
            layer.requires_grad_(False)
            frozen += 1
    if policy_gpt.share_embeddings_and_output_weights and policy_gpt.post_process:
        policy_gpt.shared_embedding_or_output_weight().requires_grad_(False)  # tied to the frozen embedding
    if policy_gpt.pre_process and policy_gpt.config.recompute_granularity == "full":
        policy_gpt.decoder.register_forward_pre_hook(_input_requires_grad, with_kwargs=True)
    return frozen


def _input_requires_grad(decoder, args, kwargs):
    """Megatron's recomputed layers (train.recompute=full) run in a reentrant checkpoint, which
    gives its output a gradient only if an input needs one; above a frozen embedding (or the
    cached trunk's output) nothing would: the trained layers would get no gradient at all.
    Where the frozen layers run in the same forward (no trunk cache: PP > 1 or
    cache_frozen_trunk=false), backward then also passes through them (their input
    gradients are computed and dropped): the price of recomputation above a frozen trunk."""
    hidden = kwargs.get("hidden_states")
    if torch.is_grad_enabled() and hidden is not None and not hidden.requires_grad:
        kwargs["hidden_states"] = hidden.detach().requires_grad_()
    return args, kwargs


class ReferenceModel(torch.nn.Module):
    """A frozen GPTModel for reference log-probs; ``model`` is what schedules run."""

    def __init__(self, policy_gpt, model_cfg, num_layers_unfrozen: int, offload: bool = False,
                 on_meta: bool = False):
        """``on_meta``: shapes only, for the planner (``policy_gpt`` built on meta too)."""
        super().__init__()
        self.model = build_model(model_cfg, on_meta=on_meta)
        if not on_meta:
            self.model.load_state_dict(policy_gpt.state_dict())
        total = policy_gpt.config.num_layers
        self.shares_trunk = 0 <= num_layers_unfrozen < total
        if self.shares_trunk:
            if self.model.pre_process:
                self.model.embedding = policy_gpt.embedding
            for i, layer in enumerate(policy_gpt.decoder.layers):
                if _global_layer_number(layer) < total - num_layers_unfrozen:
                    self.model.decoder.layers[i] = layer
        self.model.requires_grad_(False)
        self.offload = offload and not self.shares_trunk
        self.device = next(policy_gpt.parameters()).device
        if self.offload:
            self.model.to("cpu")

    def shared_parameters(self, policy_gpt) -> int:
        """Number of the reference's parameters that are the policy's own tensors."""
        own = {id(p) for p in policy_gpt.parameters()}
        return sum(p.numel() for p in self.model.parameters() if id(p) in own)

    @contextlib.contextmanager
    def on_device(self):
        """The reference, on the compute device for the duration of the block."""
        if self.offload:
            self.model.to(self.device)
        try:
            yield self.model
        finally:
            if self.offload:
                self.model.to("cpu")


def model_inputs(batch: dict) -> dict:
    """Keyword arguments for a GPTModel/PolicyModel call on a micro-batch: the cached
    frozen-trunk output, when the batch carries one, replaces the embedding; packed rows under
    Transformer Engine (``cu_seqlens``, data/supervised.py) take their PackedSeqParams."""
    inputs = {}
    if "trunk_hidden" in batch:
        inputs["decoder_input"] = batch["trunk_hidden"].transpose(0, 1).contiguous()  # [b, s, h] -> [s, b, h]
    if "cu_seqlens" in batch:
        from autorlhf_nemo.models.packing import packed_seq_params

        inputs["packed_seq_params"] = packed_seq_params(batch["cu_seqlens"])
    return inputs


class FrozenTrunk:
    """Run the frozen trunk once per rollout and reuse its output (trlX's hydra forward).

    The embedding and the bottom ``frozen`` layers do not change during a PPO
    step, so their output is computed once for the rollout's sequences and fed
    as ``decoder_input`` to the top layers of the policy (experience and every
    learning epoch) and of the reference. Single pipeline stage only: with
    PP > 1 the frozen layers may span stages and every forward runs in full.
    """

    def __init__(self, policy_gpt, num_layers_unfrozen: int):
        total = policy_gpt.config.num_layers
        self.frozen = total - num_layers_unfrozen
        self.gpt = policy_gpt

    @staticmethod
    def applies(policy_gpt, num_layers_unfrozen: int) -> bool:
        return (policy_gpt.pre_process and policy_gpt.post_process
                and 0 < num_layers_unfrozen < policy_gpt.config.num_layers)

    @contextlib.contextmanager
    def _layers(self, gpt, layers, trunk_only: bool):
        decoder = gpt.decoder
        saved = decoder.layers, decoder.num_layers_per_pipeline_rank, decoder.final_layernorm, gpt.post_process
        decoder.layers = torch.nn.ModuleList(layers)
        # Megatron's recomputed (train.recompute=full) forward counts layers by this number
        decoder.num_layers_per_pipeline_rank = len(layers)
        if trunk_only:  # stop after the frozen layers: no final norm, no output layer
            decoder.final_layernorm, gpt.post_process = None, False
        try:
            yield gpt
        finally:
            decoder.layers, decoder.num_layers_per_pipeline_rank, decoder.final_layernorm, gpt.post_process = saved

    def top(self, gpt):
        """Context: ``gpt`` (the policy's or the reference's GPTModel) runs only its
        layers above the trunk, reading ``decoder_input``."""
        return self._layers(gpt, list(gpt.decoder.layers)[self.frozen:], trunk_only=False)

    @torch.no_grad()
    def hidden(self, batch: dict, micro_batch_size: int) -> torch.Tensor:
        """Trunk output for ``batch`` (tokens, position_ids, attention_mask): [b, s, h]
        ([b, s/tp, h] under sequence parallelism)."""
        outputs = []
        with self._layers(self.gpt, list(self.gpt.decoder.layers)[:self.frozen], trunk_only=True) as gpt:
            for start in range(0, batch["tokens"].shape[0], micro_batch_size):
                rows = slice(start, start + micro_batch_size)
                out = gpt(batch["tokens"][rows], batch["position_ids"][rows], batch["attention_mask"][rows])
                outputs.append(out.transpose(0, 1))
        return torch.cat(outputs)
