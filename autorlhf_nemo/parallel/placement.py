"""Which ranks learn and which generate (``rollout.placement``), and each role's Megatron state.

colocated: every rank of the world learns and generates, at the ``parallel`` layout.
split:     ranks [0, L) learn at the ``parallel`` layout (TP x PP x DP = L); ranks [L, W)
           only generate, as (W - L) / g replicas of TP g (``rollout.generator_tensor_parallel_size``),
           no PP. Learners come first so that global rank 0 (logging, checkpoints) is a learner.

Each rank's Megatron ``parallel_state`` describes the layout of its own role: megatron-core's
``initialize_model_parallel`` runs once per role over that role's ranks (its ``RankGenerator``
offset to the role's first rank), and each rank keeps the state of its own role. Everything that reads ``parallel_state`` -- the model builder and GPTModel's
``pg_collection``, the generation engine, the vocab-parallel ops, DDP -- then works unchanged in
either role, on NCCL and gloo alike.

What collects over the *default* group -- megatron-core's optimizer construction
(``_get_param_groups``' ``all_gather_object``), its distributed checkpointing, this project's
barriers and broadcasts -- must not wait for the generators, which never make those calls. A split
run's learners therefore run inside :func:`learners_as_world`, where the default group is the
learners' own (their ranks are [0, L), so a learner's rank in it is its global rank); the learner
and generator roles talk only over the explicit groups of :class:`RolloutLinks`, made before.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
from dataclasses import dataclass
from unittest import mock

import torch.distributed as dist
from megatron.core import parallel_state

LEARNER, GENERATOR = "learner", "generator"


@dataclass(frozen=True)
class Placement:
    """The world's ranks by role. Colocated: every rank is a learner and no rank a generator
    (the learners generate for themselves)."""

    world_size: int
    num_generators: int = 0
    generator_tp: int = 1

    @classmethod
    def from_config(cls, rollout, world_size: int) -> "Placement":
        if rollout.placement != "split":
            return cls(world_size)
        return cls(world_size, rollout.generator_ranks, rollout.generator_tensor_parallel_size)

    @property
    def split(self) -> bool:
        return self.num_generators > 0

    @property
    def learner_ranks(self) -> range:
        return range(0, self.world_size - self.num_generators)

    @property
    def generator_ranks(self) -> range:
        return range(self.world_size - self.num_generators, self.world_size)

    @property
    def generator_replicas(self) -> int:
        return self.num_generators // self.generator_tp

    def role(self, rank: int) -> str:
        return GENERATOR if rank in self.generator_ranks else LEARNER

    def describe(self) -> str:
        if not self.split:
            return "colocated"
        return (f"split: learner ranks {_span(self.learner_ranks)}, generator ranks {_span(self.generator_ranks)} "
                f"({self.generator_replicas} replica(s) of TP{self.generator_tp})")


def _span(ranks: range) -> str:
    return f"{ranks.start}" if len(ranks) == 1 else f"{ranks.start}-{ranks.stop - 1}"


def _megatron_state() -> dict:
    """parallel_state's module-level state (_TENSOR_MODEL_PARALLEL_GROUP, _MPU_..., ...), shallow-copied."""
    return {name: copy.copy(value) if isinstance(value, (list, dict, set)) else value
            for name, value in vars(parallel_state).items()
            if name.startswith("_") and name[1:2].isupper() and not callable(value)}


def _initialize_over(ranks: range, tensor_model_parallel_size: int, pipeline_model_parallel_size: int,
                     context_parallel_size: int) -> None:
    """megatron-core's ``initialize_model_parallel`` for a layout of the ranks ``ranks`` of the world:
    its ``RankGenerator`` offset to ``ranks.start``, its world size ``len(ranks)``."""
    world_size = dist.get_world_size

    def role_world_size(group=None):
        return len(ranks) if group is None else world_size(group)

    class OffsetRankGenerator(parallel_state.RankGenerator):
        def __init__(self, *args, **kwargs):
            kwargs["rank_offset"] = ranks.start
            super().__init__(*args, **kwargs)

    with mock.patch.object(dist, "get_world_size", role_world_size), \
            mock.patch.object(parallel_state, "RankGenerator", OffsetRankGenerator):
        parallel_state.initialize_model_parallel(tensor_model_parallel_size, pipeline_model_parallel_size,
                                                 context_parallel_size=context_parallel_size)


def initialize_parallel_state(placement: Placement, parallel) -> None:
    """Megatron's parallel state on every rank of the world, for the layout of the rank's role.

    Colocated: ``initialize_model_parallel`` at the ``parallel`` layout. Split: every rank runs it
    twice, in the same order (``new_group`` is collective over the world): once for the learners'
    layout over the learner ranks, once for the generators' (TP g, PP 1) over theirs; a rank keeps
    the state of the call whose ranks it belongs to (it is a member of none of the other call's groups)."""
    tp, pp, cp = (parallel.tensor_model_parallel_size, parallel.pipeline_model_parallel_size,
                  parallel.context_parallel_size)
    if not placement.split:
        parallel_state.initialize_model_parallel(tp, pp, context_parallel_size=cp)
        return
    rank, pristine, mine = dist.get_rank(), _megatron_state(), None
    for ranks, layout in ((placement.learner_ranks, (tp, pp, cp)), (placement.generator_ranks,
                                                                    (placement.generator_tp, 1, 1))):
        _initialize_over(ranks, *layout)
        if rank in ranks:
            mine = _megatron_state()
        vars(parallel_state).update(pristine)  # reset without destroying the groups just made
        pristine = _megatron_state()
    vars(parallel_state).update(mine)


@dataclass
class RolloutLinks:
    """The process groups between the roles of a split placement (made collectively over the world).

    senders      the learner ranks that send weights: every TP x PP rank of learner DP replica 0
    sync_groups  sender -> group [sender] + every generator rank (weight broadcasts)
    link         [learner rank 0] + every generator rank: the start message and the sample batches
    learners     the learner ranks: their default group inside ``learners_as_world``"""

    senders: list[int]
    sync_groups: dict
    link: object
    learners: object

    @classmethod
    def create(cls, placement: Placement) -> "RolloutLinks":
        """Collective over the world, after ``initialize_parallel_state``."""
        sends = placement.role(dist.get_rank()) != GENERATOR and parallel_state.get_data_parallel_rank() == 0 \
            and parallel_state.get_context_parallel_rank() == 0
        everyone = [None] * dist.get_world_size()
        dist.all_gather_object(everyone, (dist.get_rank(), sends))
        senders = [rank for rank, send in everyone if send]
        generators = list(placement.generator_ranks)
        sync_groups = {sender: dist.new_group([sender, *generators]) for sender in senders}
        link = dist.new_group([placement.learner_ranks.start, *generators])
        learners = dist.new_group(list(placement.learner_ranks))
        return cls(senders, sync_groups, link, learners)


@contextlib.contextmanager
def learners_as_world(links: RolloutLinks):
    """On a learner rank of a split placement: the default process group is the learners' own
    inside, so calls without a group (barriers, ``all_gather_object``, dist checkpointing) are
    collective over the learners only. The learner ranks are [0, L): a rank and group rank agree."""
    world = dist.GroupMember.WORLD
    dist.GroupMember.WORLD = links.learners
    try:
        yield
    finally:
        dist.GroupMember.WORLD = world


def role_config(cfg, role: str):
    """The run's config as a rank of ``role`` builds its model: a generator's layout is
    TP ``rollout.generator_tensor_parallel_size``, PP 1, no sequence parallelism, in
    ``rollout.generator_dtype`` (null: the model's own dtype)."""
    if role != GENERATOR:
        return cfg
    r = cfg.rollout
    parallel = dataclasses.replace(cfg.parallel, tensor_model_parallel_size=r.generator_tensor_parallel_size,
                                   pipeline_model_parallel_size=1, context_parallel_size=1,
                                   sequence_parallel=False, use_distributed_optimizer=False)
    model = dataclasses.replace(cfg.model, params_dtype=r.generator_dtype or cfg.model.params_dtype)
    return dataclasses.replace(cfg, parallel=parallel, model=model)
