"""Autoregressive generation for a Megatron GPTModel at any TP/PP layout.

A small engine around the model's own modules (embedding, decoder layers,
final norm, output layer), so the weights and the TP collectives are
Megatron's and the decode loop stays readable:

* prompts are left-padded; position ids count real tokens only;
* prefill runs the whole prompt once and fills a static KV cache; every
  decode step feeds one token per sequence (no recomputation of the prefix);
* with PP, hidden states [s, b, h] go stage to stage by point-to-point send,
  the last stage samples, and the sampled tokens are broadcast to all stages;
* sequence parallelism is switched off while decoding and restored after;
* logits stay vocab-parallel: sampling and log-probs use per-row collectives
  (see ``sampling.py``).

Every rank of the model-parallel group calls :meth:`Generator.generate` with
the same prompts; all of them return the same :class:`GenerationOutput`.
Data-parallel replicas pass their own prompts and draw different random
streams (the seed is offset by the DP rank), or every prompt row draws its
own stream (``SamplingParams.row_seeds``, e.g. the global sample index) so
that samples do not depend on the DP size.
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from megatron.core import parallel_state

from megatron.core.tensor_parallel import ColumnParallelLinear, RowParallelLinear

from autorlhf_nemo.generation import matmul
from autorlhf_nemo.generation.kv_cache import KVCache
from autorlhf_nemo.generation.sampling import SamplingParams, VocabParallel, process_logits
from autorlhf_nemo.generation.stopping import StopCriteria
from autorlhf_nemo.models.norm import RMSNorm
from autorlhf_nemo.parallel.runtime import native_torch

_DP_SEED_STRIDE = 1_000_003
_ROW_SEED_OFFSET = 500_000  # keeps row streams apart from the per-DP-rank ones
_LENGTH, _EOS, _STOP = 0, 1, 2
_REASONS = {_LENGTH: "length", _EOS: "eos", _STOP: "stop"}


@dataclass
class GenerationOutput:
    """Left-padded prompts and right-padded responses, all [b, ...] on the model's device.

    logprobs: log p(token) under the policy's raw logits (no temperature or
    filtering); processed_logprobs: under the distribution actually sampled from.
    """

    prompt_ids: torch.Tensor          # [b, P] left-padded
    prompt_mask: torch.Tensor         # [b, P] 1 = real token
    response_ids: torch.Tensor        # [b, R] right-padded with pad_token_id
    response_mask: torch.Tensor       # [b, R] 1 up to and including EOS / stop
    logprobs: torch.Tensor            # [b, R] fp32, 0 where masked
    processed_logprobs: torch.Tensor  # [b, R]
    stop_reasons: list[str]           # "eos" | "stop" | "length" per sequence

    @property
    def sequences(self) -> torch.Tensor:
        """[b, P + R] prompt followed by response."""
        return torch.cat([self.prompt_ids, self.response_ids], dim=1)

    @property
    def attention_mask(self) -> torch.Tensor:
        return torch.cat([self.prompt_mask, self.response_mask], dim=1)

    def cloned(self) -> "GenerationOutput":
        return dataclasses.replace(self, **{f.name: getattr(self, f.name).clone()
                                            for f in dataclasses.fields(self) if f.name != "stop_reasons"})

    def select(self, rows: Sequence[int]) -> "GenerationOutput":
        """The output rows ``rows``, in that order (e.g. a chosen and a rejected sample per prompt)."""
        index = torch.tensor(list(rows), dtype=torch.long, device=self.response_ids.device)
        return dataclasses.replace(self, **{f.name: getattr(self, f.name).index_select(0, index)
                                            for f in dataclasses.fields(self) if f.name != "stop_reasons"},
                                   stop_reasons=[self.stop_reasons[r] for r in rows])

    def responses(self) -> list[list[int]]:
        """The response tokens of each row, on the host (for decoding into text)."""
        ids, mask = self.response_ids.cpu(), self.response_mask.cpu()
        return [row[keep.bool()].tolist() for row, keep in zip(ids, mask)]


# Module flags that Megatron derives from config.sequence_parallel at construction.
_SP_FLAGS = ("sequence_parallel", "reduce_scatter_embeddings")


@contextlib.contextmanager
def sequence_parallel_disabled(model):
    """Decode steps have one token per sequence: nothing to split along the sequence."""
    touched = [(m, flag, getattr(m, flag)) for m in model.modules() for flag in _SP_FLAGS
               if isinstance(getattr(m, flag, None), bool)]
    configs = {id(m.config): m.config for m in model.modules() if hasattr(m, "config")}
    saved = {key: cfg.sequence_parallel for key, cfg in configs.items()}
    try:
        for m, flag, _ in touched:
            setattr(m, flag, False)
        for cfg in configs.values():
            cfg.sequence_parallel = False
        yield
    finally:
        for m, flag, value in touched:
            setattr(m, flag, value)
        for key, cfg in configs.items():
            cfg.sequence_parallel = saved[key]


def left_pad(prompts: Sequence[Sequence[int]], pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        if len(prompt) == 0:
            raise ValueError(f"prompt {row} is empty: every prompt needs at least one token")
        ids[row, width - len(prompt):] = torch.as_tensor(prompt, dtype=torch.long)
        mask[row, width - len(prompt):] = 1
    return ids, mask


class Generator:
    """Samples continuations from this rank's GPTModel chunk.

    ``model`` may be wrapped (Megatron DDP); ``tokenizer`` is only needed for
    string stop sequences. ``weight_first`` picks the matmul form (default: by
    device, see ``matmul.py``). ``pack_weights``: decode with oneDNN-packed
    fp32 copies of the weights (CPU, ``matmul.packing_available``); whoever changes
    the weights then calls :meth:`weights_changed`.
    """

    def __init__(self, model, vocab_size: int, pad_token_id: int, tokenizer=None,
                 weight_first: bool | None = None, pack_weights: bool = False):
        self.model = model.module if hasattr(model, "module") else model
        self.config = self.model.config
        self.vocab_size = vocab_size
        self.pad_token_id = pad_token_id
        self.tokenizer = tokenizer
        self.max_positions = self.model.max_sequence_length
        self.first_stage = parallel_state.is_pipeline_first_stage()
        self.last_stage = parallel_state.is_pipeline_last_stage()
        self.device = next(self.model.parameters()).device
        self.weight_first = matmul.weight_first_for(self.device) if weight_first is None else weight_first
        if pack_weights and not matmul.packing_available(self.device, self.config.params_dtype):
            raise ValueError(f"pack_weights=True needs a CPU with oneDNN and fp32 weights (or bf16 where "
                             f"the CPU lacks native bf16 GEMM); got {self.config.params_dtype} on "
                             f"{self.device}: leave it off (matmul.packing_available tells)")
        self.packed = matmul.PackedWeights() if pack_weights else None
        # Rotary cos/sin for every position, once (Megatron's rotary module allocates on
        # "the CUDA device", so this stays outside native_torch).
        freqs = self.model.rotary_pos_emb(self.max_positions)[:, 0, 0]        # [L, d] (incl. scaling)
        # rotate_half(x) * sin == roll(x, d/2) * [-sin_1, sin_2]: keep sin with that sign.
        half = freqs.shape[-1] // 2
        sin = freqs.sin()
        self.rope = (freqs.cos(), torch.cat([-sin[:, :half], sin[:, half:]], dim=-1))

    # ----------------------------------------------------------------- public
    @torch.no_grad()
    def generate(self, prompts: Sequence[Sequence[int]], params: SamplingParams,
                 samples_per_prompt: int = 1) -> GenerationOutput:
        """Sample ``samples_per_prompt`` continuations of every prompt: rows
        ``i * samples_per_prompt ...`` of the output are prompt i's. The samples of a prompt
        share one prefill: its keys/values are computed once and copied to each sample's
        rows of the cache. ``params.row_seeds`` then has one seed per output row."""
        if samples_per_prompt < 1:
            raise ValueError(f"samples_per_prompt={samples_per_prompt} must be >= 1")
        params.validate(max(len(p) for p in prompts), self.max_positions, self.vocab_size,
                        len(prompts) * samples_per_prompt)
        if params.stop_strings and self.tokenizer is None:
            raise ValueError("stop_strings need a tokenizer: Generator(..., tokenizer=...)")
        prompt_ids, prompt_mask = left_pad(prompts, self.pad_token_id)
        was_training = self.model.training
        self.model.eval()
        try:
            # inference_mode: cheaper per-op dispatch than no_grad (decode runs ~1000 small ops a step)
            with sequence_parallel_disabled(self.model), native_torch(), torch.inference_mode():
                out = self._generate(prompt_ids, prompt_mask, params, self.rope, samples_per_prompt)
            return out.cloned()  # ordinary tensors: learners may modify them in place or use them in autograd
        finally:
            self.model.train(was_training)

    def weights_changed(self, weights=None) -> None:
        """The model's weights (``weights``: these tensors; None: any) were updated:
        packed copies of them are remade at their next use."""
        if self.packed is not None:
            self.packed.invalidate(weights)

    # ----------------------------------------------------------------- loop
    def _generate(self, prompt_ids, prompt_mask, params: SamplingParams, rope,
                  samples_per_prompt: int = 1) -> GenerationOutput:
        """The decode loop. Everything stays on the device; the host is asked one bool per
        step (whether every row has stopped), and only when a stop criterion is set.
        The prefill runs once per prompt; its cache, last logits and masks are then
        repeated ``samples_per_prompt`` times for the decode steps."""
        dev = self.device
        prompt_ids, prompt_mask = prompt_ids.to(dev), prompt_mask.to(dev)
        n, prompt_len = prompt_ids.shape
        steps = params.max_new_tokens
        cache = KVCache(len(self.model.decoder.layers), n, self._local_kv_heads(), prompt_len + steps,
                        self.config.kv_channels, self.config.params_dtype, dev)
        positions = (prompt_mask.cumsum(-1) - 1).clamp(min=0)
        key_valid = torch.ones(n, prompt_len + steps, dtype=torch.bool, device=dev)
        key_valid[:, :prompt_len] = prompt_mask.bool()
        logits, hidden = self._stage_forward(prompt_ids, positions, rope, cache, key_valid)  # the prefill
        if samples_per_prompt > 1:
            cache.repeat_rows(samples_per_prompt)
            prompt_ids, prompt_mask, key_valid, positions = (
                t.repeat_interleave(samples_per_prompt, dim=0) for t in (prompt_ids, prompt_mask, key_valid, positions))
            if logits is not None:
                logits, hidden = (t.repeat_interleave(samples_per_prompt, dim=0) for t in (logits, hidden))
        b = n * samples_per_prompt
        generators = self._sampling_generators(params, b)
        vp = VocabParallel(parallel_state.get_tensor_model_parallel_group(),
                           parallel_state.get_tensor_model_parallel_rank() * self._vocab_shard(),
                           self.vocab_size)
        stops = StopCriteria(params, self.tokenizer, dev)

        response = torch.full((b, steps), self.pad_token_id, dtype=torch.long, device=dev)
        response_mask = torch.zeros((b, steps), dtype=torch.long, device=dev)
        logprobs = torch.zeros((b, steps), device=dev)
        processed_logprobs = torch.zeros((b, steps), device=dev)
        reasons = torch.full((b,), _LENGTH, dtype=torch.long, device=dev)
        done = torch.zeros(b, dtype=torch.bool, device=dev)

        positions = positions[:, -1:]
        for t in range(steps):
            step = torch.zeros(b, 3, dtype=torch.float64, device=dev)  # token, logp, processed logp
            if self.last_stage:
                tokens_so_far = torch.cat([prompt_ids, response[:, :t]], dim=1) if params.has_processors else None
                raw = vp.mask_padding(logits.float())
                processed = process_logits(vp, raw, params, tokens_so_far, t, hidden)
                token = vp.argmax(processed) if params.is_greedy else vp.gumbel_argmax(processed, generators)
                step[:, 0] = token.double()
                step[:, 1] = vp.log_softmax_at(raw, token).double()
                step[:, 2] = vp.log_softmax_at(processed, token).double() \
                    if params.changes_logits(t) else step[:, 1]
            self._broadcast_from_last_stage(step)
            active = ~done
            token = torch.where(active, step[:, 0].long(), self.pad_token_id)
            response[:, t] = token
            response_mask[:, t] = active.long()
            logprobs[:, t] = torch.where(active, step[:, 1].float(), 0.0)
            processed_logprobs[:, t] = torch.where(active, step[:, 2].float(), 0.0)
            if stops.applies(t):
                eos, stop = stops(response, t)
                reasons = torch.where(active & eos, _EOS, torch.where(active & stop, _STOP, reasons))
                done = done | eos | stop
                if bool(done.all()):
                    break
            if t == steps - 1:
                break
            positions = positions + 1
            logits, hidden = self._stage_forward(token[:, None], positions, rope, cache, key_valid)

        width = int(response_mask.sum(-1).max())
        return GenerationOutput(prompt_ids, prompt_mask, response[:, :width], response_mask[:, :width],
                                logprobs[:, :width], processed_logprobs[:, :width],
                                [_REASONS[r] for r in reasons.tolist()])

    def _sampling_generators(self, params: SamplingParams, batch: int) -> list[torch.Generator]:
        """One stream per DP rank, or one per row when ``params.row_seeds`` is given."""
        seeds = ([params.seed * _DP_SEED_STRIDE + parallel_state.get_data_parallel_rank()]
                 if params.row_seeds is None else
                 [params.seed * _DP_SEED_STRIDE + _ROW_SEED_OFFSET + s for s in params.row_seeds])
        return [torch.Generator(device=self.device).manual_seed(s) for s in seeds]

    # ----------------------------------------------------------------- model pieces
    def _local_kv_heads(self) -> int:
        return self.config.num_query_groups // parallel_state.get_tensor_model_parallel_world_size()

    def _vocab_shard(self) -> int:
        return self.model.vocab_size // parallel_state.get_tensor_model_parallel_world_size()

    def _stage_forward(self, input_ids, positions, rope, cache: KVCache, key_valid):
        """Run this stage's layers on [b, s] new tokens; the last stage returns the
        vocab-parallel logits of the final position [b, V/tp] and its final-norm hidden
        state [b, H], others (None, None)."""
        b, s = input_ids.shape
        if self.first_stage:
            hidden = self.model.embedding(input_ids=input_ids, position_ids=positions)   # [s, b, h]
        else:
            hidden = torch.empty(s, b, self.config.hidden_size, dtype=self.config.params_dtype,
                                 device=self.device)
            dist.recv(hidden, src=parallel_state.get_pipeline_model_parallel_prev_rank())
        # [s, b, 1, 1, d]: broadcast over KV groups and the heads in each group
        cos, sin = (table[positions.transpose(0, 1)][:, :, None, None].to(hidden.dtype) for table in rope)
        mask = self._attention_bias(cache.length, s, key_valid, hidden.dtype)
        for index, layer in enumerate(self.model.decoder.layers):
            hidden = self._layer_forward(layer, index, hidden, (cos, sin), mask, cache)
        cache.advance(s)
        if not self.last_stage:
            dist.send(hidden.contiguous(), dst=parallel_state.get_pipeline_model_parallel_next_rank())
            return None, None
        hidden = self._norm(self.model.decoder.final_layernorm, hidden[-1:])
        return self._linear(self.model.output_layer, hidden, weight=self._output_weight())[0], hidden[0]

    def _output_weight(self):
        if self.model.share_embeddings_and_output_weights:
            return self.model.shared_embedding_or_output_weight()
        return self.model.output_layer.weight

    @staticmethod
    def _attention_bias(past: int, s: int, key_valid, dtype) -> torch.Tensor:
        """Additive mask [b, 1, s, past+s]: 0 where query i may see key j (j <= past+i and
        j is not padding), the dtype's minimum elsewhere (no NaN for all-padding rows)."""
        total = past + s
        query_pos = torch.arange(past, total, device=key_valid.device)[:, None]
        key_pos = torch.arange(total, device=key_valid.device)[None, :]
        allowed = (key_pos <= query_pos)[None] & key_valid[:, None, :total]
        bias = torch.zeros(allowed.shape, dtype=dtype, device=key_valid.device)
        return bias.masked_fill(~allowed, torch.finfo(dtype).min).unsqueeze(1)

    @staticmethod
    def _rotate(x, cos, signed_sin):
        """Rotary embedding, Megatron's non-interleaved form: x cos + rotate_half(x) sin,
        with rotate_half(x) sin = roll(x, d/2) signed_sin (see ``__init__``)."""
        return torch.addcmul(x * cos, x.roll(x.shape[-1] // 2, dims=-1), signed_sin)

    def _linear(self, module, x, weight=None):
        """y = module(x) for inference. Megatron's local TP linears are called through
        their weights (no autograd Function, no SP branches): column-parallel gives
        this rank's output slice, row-parallel is all-reduced over the TP group.
        Other implementations (Transformer Engine, with fused norms) are called as modules.
        ``weight`` overrides the module's own (tied output layer)."""
        if type(module) is ColumnParallelLinear and not module.gather_output:
            weight = module.weight if weight is None else weight
            out, bias = matmul.linear(x, weight, self.weight_first, self.packed), module.bias
        elif type(module) is RowParallelLinear and module.input_is_parallel:
            out, bias = matmul.linear(x, module.weight, self.weight_first, self.packed), module.bias
            if parallel_state.get_tensor_model_parallel_world_size() > 1:
                out = out.contiguous()
                dist.all_reduce(out, group=parallel_state.get_tensor_model_parallel_group())
        else:
            out, bias = module(x) if weight is None else module(x, weight=weight)
        return out if bias is None else out + bias

    @staticmethod
    def _norm(module, x):
        """Our RMSNorm through the fused ``F.rms_norm`` (same formula, reduced in fp32
        also for bf16 inputs, one kernel instead of seven); other norms (Transformer
        Engine) as modules."""
        if type(module) is RMSNorm:
            return F.rms_norm(x, x.shape[-1:], module.weight.to(x.dtype), module.eps)
        return module(x)

    def _layer_forward(self, layer, index: int, hidden, rope, mask, cache: KVCache):
        """One decoder layer with cached keys/values. hidden [s, b, h].

        Fused QKV rows are grouped per KV head: [q (heads/groups x d); k (d); v (d)],
        so queries and keys are rotated together in one pass."""
        s, b = hidden.shape[:2]
        d = self.config.kv_channels
        groups = self._local_kv_heads()
        mixed = self._linear(layer.self_attention.linear_qkv, self._norm(layer.input_layernorm, hidden))
        mixed = mixed.reshape(s, b, groups, -1, d)                                  # [s, b, g, heads/g + 2, d]
        per_group = mixed.shape[3] - 2
        rotated = self._rotate(mixed[:, :, :, :per_group + 1], *rope)               # queries and keys
        query = rotated[:, :, :, :per_group].reshape(s, b, groups * per_group, d)   # [s, b, heads, d]
        key, value = rotated[:, :, :, per_group], mixed[:, :, :, per_group + 1]     # [s, b, g, d]
        keys, values = cache.append(index, key.permute(1, 2, 0, 3), value.permute(1, 2, 0, 3))
        context = self._attention(query.permute(1, 2, 0, 3), keys, values, mask)    # [b, heads, s, d]
        out = self._linear(layer.self_attention.linear_proj, context.permute(2, 0, 1, 3).reshape(s, b, -1))
        hidden = hidden + out
        gate, up = self._linear(layer.mlp.linear_fc1, self._norm(layer.pre_mlp_layernorm, hidden)).chunk(2, dim=-1)
        return hidden + self._linear(layer.mlp.linear_fc2, F.silu(gate) * up)

    @staticmethod
    def _attention(query, keys, values, bias):
        """softmax(q k^T / sqrt(d) + bias) v with grouped-query attention (keys are
        not repeated): query [b, heads, s, d], keys/values [b, groups, L, d],
        bias [b, 1, s, L] in the query's dtype."""
        return F.scaled_dot_product_attention(query, keys, values, attn_mask=bias,
                                              enable_gqa=keys.shape[1] != query.shape[1])

    def _broadcast_from_last_stage(self, tensor: torch.Tensor) -> None:
        if parallel_state.get_pipeline_model_parallel_world_size() > 1:
            dist.broadcast(tensor, src=parallel_state.get_pipeline_model_parallel_last_rank(),
                           group=parallel_state.get_pipeline_model_parallel_group())
