"""One rank of a large layout, in this process, without its hardware.

The planner builds each pipeline stage's model chunk exactly as a real rank
would (same Megatron parallel state, same ``build_model``), but on the meta
device (shapes, no memory) and inside a *fake* process group of the full
world size, whose collectives do nothing. The fake backend is PyTorch's own
(``torch.testing._internal.distributed.fake_pg``, used by PyTorch to plan
FSDP memory); it is imported only here.
"""

from __future__ import annotations

import contextlib

import torch.distributed as dist
from megatron.core import parallel_state


@contextlib.contextmanager
def fake_rank(rank: int, world_size: int, tp: int, pp: int, cp: int = 1):
    """Megatron's parallel state as global rank ``rank`` of a ``world_size`` job."""
    try:
        from torch.testing._internal.distributed.fake_pg import FakeStore
    except ImportError as error:  # a torch build without its testing package
        raise RuntimeError("the planner needs PyTorch's fake process group "
                           "(torch.testing._internal.distributed.fake_pg, torch >= 2.1)") from error

    if dist.is_initialized():
        raise RuntimeError("the planner needs a process without torch.distributed started")
    dist.init_process_group("fake", store=FakeStore(), rank=rank, world_size=world_size)
    try:
        parallel_state.initialize_model_parallel(
            tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp, context_parallel_size=cp,
            create_gloo_process_groups=False)
        yield
    finally:
        parallel_state.destroy_model_parallel()
        dist.destroy_process_group()


def stage_rank(stage: int, world_size: int, pp: int) -> int:
    """Global rank of the stage's first rank (tp 0, cp 0, dp 0): Megatron orders ranks
    tp-cp-ep-dp-pp, pipeline outermost, so each stage is a block of world/pp ranks."""
    return stage * (world_size // pp)
