"""Dry-run planner: a layout's parameters and GPU memory per pipeline stage, without GPUs.

For each stage, the rank (tp 0, dp 0) is built the way a real job builds it
(``build_model``; with an algorithm also the value head, the frozen trunk and
the reference model) on the meta device inside a fake process group of the
full world size (``meta_world.py``), and its parameters are counted. TP ranks
of a stage hold equal shards and DP ranks are replicas, so these counts stand
for every rank. ILQL's heads are counted from their shapes (``ILQLHeads``).
Memory follows from the counts (``memory.py``).

A split placement (rollout.placement=split) is planned as its learners -- the ``parallel``
layout over world - rollout.generator_ranks ranks, evaluating only -- plus one generator rank
(TP rollout.generator_tensor_parallel_size, rollout.generator_dtype) holding its share of the
trunk and the KV cache of its share of a step's samples.
"""

from __future__ import annotations

from dataclasses import dataclass

from autorlhf_nemo.config.schema import (OFFLINE_ALGORITHMS, SUPERVISED_ALGORITHMS, ILQLConfig, RootConfig,
                                         typed_config)
from autorlhf_nemo.config.validate import ConfigError, learner_rows_per_prompt, validate_config
from autorlhf_nemo.models.gpt import padded_vocab_size
from autorlhf_nemo.parallel.placement import Placement
from autorlhf_nemo.plan.memory import (DTYPE_BYTES, GIB, GeneratorMemory, Shapes, StageMemory, generator_memory,
                                       stage_memory)
from autorlhf_nemo.plan.meta_world import fake_rank, stage_rank


@dataclass
class StageCounts:
    """Parameters of one rank of a stage (tp 0, dp 0)."""

    layers: int
    trunk: int           # GPTModel chunk (embedding, layers, norm, output layer)
    trunk_sharded: int   # of which split over TP (the rest is replicated on every TP rank)
    head: int            # last stage: PPO's value head; ILQL's V, Q and target Q heads
    trainable: int       # (ILQL's target Q heads are frozen)
    reference: int       # the reference model's own parameters (not shared with the policy)


@dataclass
class ILQLHeads:
    """ILQL's heads on the last stage at width w (hidden h, padded vocabulary V), summed over TP:

        V head  fc1 [w, h] + [w], fc2 [1, w] + [1]    w h + 2 w + 1
        Q head  fc1 [w, h] + [w], fc2 [V, w] + [V]    w h + w + V w + V

    ``q_heads`` Q heads train (one, or two with two_qs); as many target Q heads are frozen
    copies (weights only). Per TP rank t: fc1 is column-parallel (w/t rows), Q's fc2
    vocab-parallel like the LM head (V/t rows), V's fc2 row-parallel (w/t columns, its one
    bias on every rank): V (w h + 2 w)/t + 1, Q (w h + w + V w + V)/t."""

    hidden: int
    width: int
    vocab: int
    q_heads: int

    def v(self, tp: int = 1) -> int:
        w, h = self.width, self.hidden
        return (w * h + 2 * w) // tp + 1

    def q(self, tp: int = 1) -> int:
        w, h, v = self.width, self.hidden, self.vocab
        return (w * h + w + v * w + v) // tp

    def trainable(self, tp: int = 1) -> int:
        return self.v(tp) + self.q_heads * self.q(tp)

    def total(self, tp: int = 1) -> int:
        """V + Q + target Q heads."""
        return self.trainable(tp) + self.q_heads * self.q(tp)

    def at_width(self, width: int) -> ILQLHeads:
        return ILQLHeads(self.hidden, width, self.vocab, self.q_heads)


@dataclass
class Plan:
    model: str
    world_size: int
    tp: int
    pp: int
    cp: int
    dp: int
    sequence_parallel: bool
    distributed_optimizer: bool
    recompute: str | None
    algorithm: str | None
    counts: list[StageCounts]
    memory: list[StageMemory]
    gpu_memory: int
    ilql_heads: ILQLHeads | None = None
    # split placement: generator ranks, their TP size, and one generator rank's memory
    generator_ranks: int = 0
    generator_tp: int = 1
    generator: GeneratorMemory | None = None

    @property
    def total_parameters(self) -> int:
        """The model's parameters: each stage's TP shards times TP, replicated tensors once."""
        return sum(c.trunk_sharded * self.tp + (c.trunk - c.trunk_sharded) for c in self.counts)

    def problems(self) -> list[str]:
        problems = []
        for m in self.memory:
            if m.peak > self.gpu_memory:
                problems.append(
                    f"stage {m.stage} needs {m.peak / GIB:.1f} GiB per GPU, more than "
                    f"cluster.gpu_memory_gib={self.gpu_memory / GIB:g} (weights {m.weights / GIB:.1f}, "
                    f"gradients {m.gradients / GIB:.1f}, optimizer {m.optimizer / GIB:.1f}, reference "
                    f"{m.reference / GIB:.1f}, activations {(m.activations + m.logits) / GIB:.1f}, KV cache "
                    f"{m.kv_cache / GIB:.1f}, reserved {m.reserved / GIB:.1f}"
                    + (f", weight-sync snapshot {m.sync_snapshot / GIB:.1f}" if m.sync_snapshot else "")
                    + " GiB): raise "
                    f"parallel.tensor_model_parallel_size or pipeline_model_parallel_size"
                    + ("" if self.distributed_optimizer else ", set parallel.use_distributed_optimizer=true")
                    + ("" if self.recompute == "full" else ", set train.recompute=full")
                    + ", or lower train.micro_batch_size / train.seq_length / "
                    + ("task.num_eval_prompts" if self.algorithm in OFFLINE_ALGORITHMS else "algorithm.prompts_per_step"))
        g = self.generator
        if g is not None and g.peak > self.gpu_memory:
            problems.append(
                f"a generator rank needs {g.peak / GIB:.1f} GiB per GPU, more than cluster.gpu_memory_gib="
                f"{self.gpu_memory / GIB:g} (weights {g.weights / GIB:.1f}, KV cache {g.kv_cache / GIB:.1f}, logits "
                f"{g.logits / GIB:.1f}, weight-sync receive buffer {g.receive / GIB:.1f}, reserved {g.reserved / GIB:.1f} "
                f"GiB): raise rollout.generator_tensor_parallel_size, set rollout.generator_dtype=bfloat16, add "
                f"generator replicas, or lower algorithm.prompts_per_step / train.seq_length")
        return problems


def world_size_of(cfg: RootConfig) -> int:
    """parallel.world_size when set, else the Slurm allocation: nodes x GPUs per node."""
    return cfg.parallel.world_size or cfg.cluster.world_size()


def plan_layout(cfg) -> Plan:
    """Validate ``cfg`` (composed, or a RootConfig) at its world size, then count and budget
    every stage. Raises ConfigError for a broken layout (before anything is built)."""
    typed = typed_config(cfg)
    world = world_size_of(typed)
    validate_config(cfg, world_size=world)
    cfg = typed
    m, p, t, a, c, r = cfg.model, cfg.parallel, cfg.train, cfg.algorithm, cfg.cluster, cfg.rollout
    placement = Placement.from_config(r, world)
    split, learners = placement.split, len(placement.learner_ranks)
    tp, pp, cp = p.tensor_model_parallel_size, p.pipeline_model_parallel_size, p.context_parallel_size
    dp = learners // (tp * pp * cp)

    vocab = padded_vocab_size(m.vocab_size, m.make_vocab_size_divisible_by)
    ilql = None
    if isinstance(a, ILQLConfig):
        ilql = ILQLHeads(m.hidden_size, a.width(m.hidden_size), vocab, 2 if a.two_qs else 1)
        if ilql.width % tp:
            raise ConfigError([f"the ILQL heads' width {ilql.width} (algorithm.head_width, null: "
                               f"model.hidden_size) is not divisible by tensor_model_parallel_size={tp}"])

    counts = []
    for stage in range(pp):
        with fake_rank(stage_rank(stage, learners, pp), learners, tp, pp, cp):
            counts.append(_count_stage(cfg, ilql))

    if ilql is not None:  # offline: train.global_batch_size samples a step; generation only to evaluate
        micro_batches = t.global_batch_size // (dp * t.micro_batch_size)
        generation_batch = -(-cfg.task.num_eval_prompts // dp)
    elif a is not None and a.name in SUPERVISED_ALGORITHMS:  # SFT, DPO: a dataset; decoding only to evaluate
        rows = t.global_batch_size * (2 if a.name == "dpo" else 1)  # DPO: pairs of sequences
        micro_batches = rows // (dp * t.micro_batch_size)
        generation_batch = -(-cfg.task.num_eval_prompts // dp) if a.eval_generation else 0
    elif a is not None:
        rollouts = a.prompts_per_step * a.samples_per_prompt
        learner_rows = a.prompts_per_step * learner_rows_per_prompt(a.name, a.samples_per_prompt)
        micro_batches = learner_rows // (dp * a.minibatches * t.micro_batch_size)
        # split: the generators sample; the learners generate only to evaluate
        generation_batch = -(-(cfg.task.num_eval_prompts if split else max(rollouts, cfg.task.num_eval_prompts)) // dp)
    else:
        micro_batches = t.global_batch_size // (dp * t.micro_batch_size)
        generation_batch = 0
    head_dim = m.kv_channels or m.hidden_size // m.num_attention_heads
    shapes = Shapes(
        hidden=m.hidden_size, kv_width=m.num_query_groups * head_dim, ffn=m.ffn_hidden_size,
        vocab=vocab, dtype_bytes=DTYPE_BYTES[m.params_dtype], tp=tp, pp=pp,
        sequence_parallel=p.sequence_parallel, recompute=t.recompute, seq_length=t.seq_length // cp,
        micro_batch_size=t.micro_batch_size, micro_batches=micro_batches, generation_batch=generation_batch,
        q_heads=ilql.q_heads if ilql else 0)
    # an offloaded reference leaves the GPU unless it shares the policy's frozen trunk (models/reference.py)
    offloaded = a is not None and a.offload_reference and not 0 <= a.num_layers_unfrozen < m.num_layers
    memory = [
        stage_memory(shapes, stage, n.layers, n.trunk + n.head, n.trainable,
                     0 if offloaded else n.reference, t.optimizer,
                     dp * cp if p.use_distributed_optimizer else 1, c.reserved_memory_gib,
                     last_stage=stage == pp - 1,
                     fp32_parameters=n.head if ilql else 0,
                     fp32_trainable=ilql.trainable(tp) if ilql and stage == pp - 1 else 0,
                     sync_snapshot=n.trunk * shapes.dtype_bytes if split else 0)
        for stage, n in enumerate(counts)]
    generator = None
    if split:
        g = r.generator_tensor_parallel_size
        gen_bytes = DTYPE_BYTES[r.generator_dtype or m.params_dtype]
        generator = generator_memory(
            sharded=sum(n.trunk_sharded for n in counts) * tp, replicated=sum(n.trunk - n.trunk_sharded for n in counts),
            layers=m.num_layers, kv_width=shapes.kv_width, vocab=vocab, seq_length=t.seq_length,
            batch=a.prompts_per_step * a.samples_per_prompt // placement.generator_replicas, tp=g, dtype_bytes=gen_bytes,
            largest_shard_bytes=max(n.trunk for n in counts) * shapes.dtype_bytes, reserved_gib=c.reserved_memory_gib)
    return Plan(model=m.name, world_size=world, tp=tp, pp=pp, cp=cp, dp=dp,
                sequence_parallel=p.sequence_parallel, distributed_optimizer=p.use_distributed_optimizer,
                recompute=t.recompute, algorithm=a.name if a else None, counts=counts, memory=memory,
                gpu_memory=int(c.gpu_memory_gib * GIB), ilql_heads=ilql,
                generator_ranks=placement.num_generators, generator_tp=r.generator_tensor_parallel_size,
                generator=generator)


def _count_stage(cfg: RootConfig, ilql: ILQLHeads | None) -> StageCounts:
    """This rank's chunk on the meta device, assembled as the job assembles it; ILQL's heads
    (last stage) from their shapes."""
    from autorlhf_nemo.models.gpt import build_model

    gpt = build_model(cfg, on_meta=True)
    layers = len(gpt.decoder.layers)
    trunk = sum(p.numel() for p in gpt.parameters())
    sharded = sum(p.numel() for p in gpt.parameters() if getattr(p, "tensor_model_parallel", False))
    algorithm = cfg.algorithm
    if algorithm is None:
        return StageCounts(layers, trunk, sharded, head=0, trainable=trunk, reference=0)

    from megatron.core import parallel_state

    from autorlhf_nemo.models.policy import PolicyModel
    from autorlhf_nemo.models.reference import ReferenceModel, freeze_trunk

    k = algorithm.num_layers_unfrozen
    reference = ReferenceModel(gpt, cfg, k, on_meta=True) if algorithm.uses_reference() else None
    freeze_trunk(gpt, k)
    policy = PolicyModel(gpt, value_head_seed=algorithm.critic_seed())
    head = sum(p.numel() for p in policy.value_head.parameters()) if policy.value_head is not None else 0
    trainable = sum(p.numel() for p in policy.parameters() if p.requires_grad)
    reference_own = 0 if reference is None else \
        sum(p.numel() for p in reference.model.parameters()) - reference.shared_parameters(gpt)
    if ilql is not None and gpt.post_process:
        tp = parallel_state.get_tensor_model_parallel_world_size()
        head, trainable = ilql.total(tp), trainable + ilql.trainable(tp)
    return StageCounts(layers, trunk, sharded, head=head, trainable=trainable, reference=reference_own)


__all__ = ["ConfigError", "ILQLHeads", "Plan", "StageCounts", "plan_layout", "world_size_of"]
