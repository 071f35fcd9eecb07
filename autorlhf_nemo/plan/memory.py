"""GPU memory of one rank, from its parameter counts and the batch geometry.

All figures in bytes, per GPU, for the Megatron setup this package builds
(``training/engine.py``: DDP gradient buffers in fp32, Megatron's Adam with
fp32 master weights for bf16/fp16 parameters):

    weights     = P x dtype_bytes                     (policy + heads on this rank: PPO's value
                                                       head; ILQL's V, Q and frozen target Q heads)
    gradients   = P_trainable x 4                     (fp32 grad buffer; not the target Q heads)
    optimizer   = P_trainable x (4 master [half params only] + 8 Adam m, v) / DP_shard
                  DP_shard = data-parallel size with the distributed optimizer, else 1
    reference   = P_reference x dtype_bytes           (the reference's own layers; 0 if CPU-offloaded)

Training activations per decoder layer and micro-batch (s tokens, b sequences,
hidden h, key/value width h_kv, FFN width f, TP size t; flash attention, so
no s x s scores are kept; Korthikanti et al. 2022 counted for a Llama layer):

    stored tensors: input-norm input h, QKV input h, q h, k and v 2 h_kv, attention
    output h, MLP-norm input h, FC1 input h, FC1 output 2 f, FC2 input f
    no SP : dtype_bytes x s b (4 h + (2 h + 2 h_kv + 3 f) / t)   (norm/linear inputs replicated over TP)
    SP    : dtype_bytes x s b (6 h + 2 h_kv + 3 f) / t
    full recompute: only the layer input, dtype_bytes x s b h (/t with SP), plus one
    layer's full set while it is recomputed. Selective recompute (core attention)
    saves nothing more once attention is flash attention.

With 1F1B pipelining stage i holds min(PP - i, micro-batches) micro-batches in
flight. The last stage adds the logits: s b V/t x (dtype_bytes + 4 + 4)
(the logits, their fp32 copy for log-softmax, and its gradient). ILQL's heads are fp32:
each of its q Q heads adds an output of that size at 4 + 4 + 4 B (the output, CQL's
cross-entropy copy, the gradient), each of its q target Q heads one at 4 B:

    logits = s b V/t x ((dtype_bytes + 8) + 12 q + 4 q)

The heads' own weights are fp32 (4 B), with their gradients (4 B) and, Adam, 8 B of
state for the trained ones (no separate master copy for fp32 parameters).

(the heads' hidden layers, s b w/t each, are left out: w << V).

Generation (same ranks, before learning) holds the KV cache instead:

    kv_cache = 2 x layers x b_gen x S x (kv_heads / t) x head_dim x dtype_bytes

The peak is the static state plus the larger of the two phases, plus a
reserve for the CUDA context, NCCL buffers and allocator fragmentation.

Split placement (rollout.placement=split): the learner ranks hold the above for their own
layout (their generation: the evaluation prompts only); a learner rank that sends weights
(data-parallel replica 0) also keeps its snapshot of them while the generators receive it:

    sync_snapshot = P_stage x dtype_bytes

A generator rank (TP g, no PP, in rollout.generator_dtype) holds the whole trunk's 1/g:

    weights  = (P_sharded / g + P_replicated) x gen_dtype_bytes
    KV cache = 2 x layers x b_gen x S x (kv_heads / g) x head_dim x gen_dtype_bytes
               b_gen = prompts_per_step x samples_per_prompt / replicas
    logits   = b_gen x V/g x (gen_dtype_bytes + 8)          (one decode step's, fp32 copies)
    receive  = the largest learner rank's shard x dtype_bytes (one sender's buffer at a time)
               + the first sync's coverage check: one int8 per generator parameter

    peak = weights + max(KV cache + logits, receive) + reserved
"""

from __future__ import annotations

from dataclasses import dataclass

GIB = 2 ** 30
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


@dataclass
class Shapes:
    """What the activation and KV-cache formulas need of the model and the run."""

    hidden: int
    kv_width: int          # num_query_groups x head_dim
    ffn: int
    vocab: int             # padded
    dtype_bytes: int
    tp: int
    pp: int
    sequence_parallel: bool
    recompute: str | None  # None | "selective" | "full"
    seq_length: int
    micro_batch_size: int
    micro_batches: int     # per optimizer step and DP rank
    generation_batch: int  # sequences one rank generates at once (0: no generation)
    q_heads: int = 0       # ILQL's Q heads (each with a target copy) on the last stage


@dataclass
class StageMemory:
    stage: int
    layers: int
    parameters: int
    trainable: int
    reference_parameters: int
    weights: int
    gradients: int
    optimizer: int
    optimizer_unsharded: int   # the same without the distributed optimizer
    reference: int
    activations: int
    logits: int
    kv_cache: int
    reserved: int
    sync_snapshot: int = 0     # split placement, weight-sending ranks: the weights' snapshot

    @property
    def static(self) -> int:
        return self.weights + self.gradients + self.optimizer + self.reference + self.sync_snapshot

    @property
    def peak(self) -> int:
        return self.static + max(self.activations + self.logits, self.kv_cache) + self.reserved


@dataclass
class GeneratorMemory:
    """One generator rank of a split placement (see the module docstring)."""

    parameters: int
    weights: int
    kv_cache: int
    logits: int
    receive: int
    reserved: int

    @property
    def peak(self) -> int:
        return self.weights + max(self.kv_cache + self.logits, self.receive) + self.reserved


def generator_memory(sharded: int, replicated: int, layers: int, kv_width: int, vocab: int, seq_length: int,
                     batch: int, tp: int, dtype_bytes: int, largest_shard_bytes: int,
                     reserved_gib: float) -> GeneratorMemory:
    """``sharded`` / ``replicated``: the trunk's TP-split and replicated parameters (whole model);
    ``batch``: sequences a replica generates at once; ``largest_shard_bytes``: the biggest sender's buffer."""
    parameters = sharded // tp + replicated
    return GeneratorMemory(
        parameters=parameters, weights=parameters * dtype_bytes,
        kv_cache=2 * layers * batch * seq_length * (kv_width // tp) * dtype_bytes,
        logits=batch * (vocab // tp) * (dtype_bytes + 8), receive=largest_shard_bytes + parameters,
        reserved=int(reserved_gib * GIB))


def layer_activation_bytes(shapes: Shapes) -> int:
    """Stored activations of one decoder layer for one micro-batch (no recomputation)."""
    sh = shapes
    tokens = sh.seq_length * sh.micro_batch_size
    sharded = 2 * sh.hidden + 2 * sh.kv_width + 3 * sh.ffn
    replicated = 4 * sh.hidden
    if sh.sequence_parallel:
        return sh.dtype_bytes * tokens * (replicated + sharded) // sh.tp
    return sh.dtype_bytes * tokens * (replicated + sharded // sh.tp)


def stage_activation_bytes(shapes: Shapes, stage: int, layers: int) -> int:
    """Activations stage ``stage`` holds at the 1F1B peak."""
    sh = shapes
    in_flight = min(sh.pp - stage, sh.micro_batches)
    full_layer = layer_activation_bytes(sh)
    if sh.recompute == "full":
        layer_input = sh.dtype_bytes * sh.seq_length * sh.micro_batch_size * sh.hidden
        layer_input //= sh.tp if sh.sequence_parallel else 1
        return in_flight * layers * layer_input + full_layer
    return in_flight * layers * full_layer


def logits_bytes(shapes: Shapes) -> int:
    """s b V/t x ((dtype_bytes + 8) + 12 q + 4 q): LM logits, fp32 Q and target Q outputs."""
    sh = shapes
    per_entry = (sh.dtype_bytes + 4 + 4) + sh.q_heads * (4 + 4 + 4) + sh.q_heads * 4
    return sh.seq_length * sh.micro_batch_size * (sh.vocab // sh.tp) * per_entry


def kv_cache_bytes(shapes: Shapes, layers: int) -> int:
    sh = shapes
    return 2 * layers * sh.generation_batch * sh.seq_length * (sh.kv_width // sh.tp) * sh.dtype_bytes


def stage_memory(shapes: Shapes, stage: int, layers: int, parameters: int, trainable: int,
                 reference_parameters: int, optimizer: str, dp_shard: int, reserved_gib: float,
                 last_stage: bool, fp32_parameters: int = 0, fp32_trainable: int = 0,
                 sync_snapshot: int = 0) -> StageMemory:
    """``fp32_parameters`` / ``fp32_trainable``: of ``parameters`` / ``trainable``, those kept in
    fp32 whatever the model's dtype (ILQL's heads); ``sync_snapshot``: bytes of a split
    placement's weight snapshot on a sending rank."""
    half = shapes.dtype_bytes == 2
    adam = 8 if optimizer == "adam" else 0
    state = (trainable - fp32_trainable) * ((4 if half else 0) + adam) + fp32_trainable * adam
    return StageMemory(
        stage=stage, layers=layers, parameters=parameters, trainable=trainable,
        reference_parameters=reference_parameters,
        weights=(parameters - fp32_parameters) * shapes.dtype_bytes + fp32_parameters * 4,
        gradients=trainable * 4,
        optimizer=-(-state // dp_shard),
        optimizer_unsharded=state,
        reference=reference_parameters * shapes.dtype_bytes,
        activations=stage_activation_bytes(shapes, stage, layers),
        logits=logits_bytes(shapes) if last_stage else 0,
        kv_cache=kv_cache_bytes(shapes, layers),
        reserved=int(reserved_gib * GIB),
        sync_snapshot=sync_snapshot,
    )
