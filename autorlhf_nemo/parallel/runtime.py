"""Start torch.distributed and Megatron's parallel state from a config.

Usage under torchrun (CPU/gloo or GPU/NCCL alike)::

    runtime = initialize(cfg)      # validates the layout first
    ...                            # runtime.groups holds the process groups of this rank's role
    shutdown()

``AUTORLHF_VIRTUAL_GPU=1`` on a machine without CUDA runs the device-discipline
check (``cpu_compat.VirtualGpuMode``): the rank's device is a virtual ``cuda:0``
computed on the CPU, and whatever would fail on a GPU (a host tensor meeting a
device tensor, a host tensor handed to NCCL) raises.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from megatron.core import parallel_state
from megatron.core.process_groups_config import ProcessGroupCollection
from megatron.core.tensor_parallel import model_parallel_cuda_manual_seed

from autorlhf_nemo.config.schema import RootConfig
from autorlhf_nemo.config.validate import validate_config
from autorlhf_nemo.parallel import cpu_compat
from autorlhf_nemo.parallel.placement import LEARNER, Placement, RolloutLinks, initialize_parallel_state
from autorlhf_nemo.versions import check_supported

VIRTUAL_GPU_ENV = "AUTORLHF_VIRTUAL_GPU"


@dataclass
class Runtime:
    """What a rank knows about its place in the layout."""

    rank: int
    world_size: int
    device: torch.device
    backend: str
    tp_size: int
    pp_size: int
    dp_size: int
    tp_rank: int
    pp_rank: int
    dp_rank: int
    groups: ProcessGroupCollection
    # rollout.placement: which ranks learn and which only generate
    placement: Placement = None
    # split placement: the groups between learners and generators (None when colocated)
    links: RolloutLinks | None = None

    @property
    def role(self) -> str:
        """This rank's role in the placement: learner or generator."""
        return self.placement.role(self.rank) if self.placement else LEARNER

    @property
    def is_first_stage(self) -> bool:
        return self.pp_rank == 0

    @property
    def is_last_stage(self) -> bool:
        return self.pp_rank == self.pp_size - 1

    def describe(self) -> str:
        check = " (virtual GPU: device-discipline check)" if cpu_compat.virtual_gpu() else ""
        placement = f"; {self.placement.describe()}" if self.placement and self.placement.split else ""
        return (f"TP{self.tp_size} x PP{self.pp_size} x DP{self.dp_size} on {self.world_size} rank(s){placement}, "
                f"backend {self.backend}, device {self.device}{check}")


def _choose_backend(requested: str) -> str:
    if requested == "auto":
        return "nccl" if torch.cuda.is_available() else "gloo"
    if requested == "nccl" and not torch.cuda.is_available():
        raise RuntimeError("parallel.backend=nccl needs CUDA; use parallel.backend=gloo or auto on CPU")
    if requested == "gloo" and torch.cuda.is_available():
        raise RuntimeError("parallel.backend=gloo on a machine with CUDA: the models live on the GPUs and "
                           "gloo cannot run Megatron's collectives on GPU tensors; use parallel.backend=auto "
                           "or nccl")
    return requested


def _set_launch_env_defaults() -> None:
    """torchrun sets RANK, WORLD_SIZE, MASTER_ADDR, ... itself. Hydra's submitit launcher
    (hydra/launcher=slurm or local) starts one process per task without them: they come
    from the submitit job environment (Slurm's, or the local executor's). A plain
    `python` process is a world of one."""
    if "RANK" not in os.environ and "SUBMITIT_EXECUTOR" in os.environ:
        from submitit.helpers import TorchDistributedEnvironment

        # Every task sees all of its node's GPUs and picks LOCAL_RANK (see initialize).
        TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("LOCAL_RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    if "MASTER_PORT" not in os.environ:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            os.environ["MASTER_PORT"] = str(s.getsockname()[1])


def initialize(cfg: RootConfig) -> Runtime:
    """Validate ``cfg``, start the process group and Megatron's parallel state, seed RNGs.

    The layout is checked before any process group exists, so a bad config
    fails in every rank at once with the same message; so does an untested
    megatron-core or nemo-toolkit (``versions.check_supported``).
    """
    check_supported()
    _set_launch_env_defaults()
    world_size = int(os.environ["WORLD_SIZE"])
    validate_config(cfg, world_size=world_size)
    # cluster.env: the NCCL environment hooks, in place before any communicator exists.
    os.environ.update({name: str(value) for name, value in cfg.cluster.env.items()})
    par = cfg.parallel

    backend = _choose_backend(par.backend)
    virtual_gpu = os.environ.get(VIRTUAL_GPU_ENV) == "1"
    if virtual_gpu and torch.cuda.is_available():
        raise RuntimeError(f"{VIRTUAL_GPU_ENV}=1 is the device check for machines without CUDA; unset it here")
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    elif not torch.cuda.is_available():
        cpu_compat.enable(virtual_gpu=virtual_gpu)
    device = compute_device()

    if not dist.is_initialized():
        dist.init_process_group(
            backend=backend,
            rank=int(os.environ["RANK"]),
            world_size=world_size,
            timeout=datetime.timedelta(minutes=par.timeout_minutes),
        )
    placement = Placement.from_config(cfg.rollout, world_size)
    initialize_parallel_state(placement, par)
    links = RolloutLinks.create(placement) if placement.split else None
    seed_everything(cfg.train.seed)
    return Runtime(
        rank=dist.get_rank(),
        world_size=world_size,
        device=device,
        backend=backend,
        tp_size=parallel_state.get_tensor_model_parallel_world_size(),
        pp_size=parallel_state.get_pipeline_model_parallel_world_size(),
        dp_size=parallel_state.get_data_parallel_world_size(),
        tp_rank=parallel_state.get_tensor_model_parallel_rank(),
        pp_rank=parallel_state.get_pipeline_model_parallel_rank(),
        dp_rank=parallel_state.get_data_parallel_rank(),
        groups=ProcessGroupCollection.use_mpu_process_groups(),
        placement=placement,
        links=links,
    )


def compute_device() -> torch.device:
    """Where this rank's models and batches live: its GPU (after ``initialize`` picked it),
    the virtual GPU of the device check, or the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cuda", 0) if cpu_compat.virtual_gpu() else torch.device("cpu")


def seed_everything(seed: int) -> None:
    """Megatron's seeding: same default stream within a model-parallel group,
    a distinct tensor-parallel stream per TP rank (for dropout in TP regions)."""
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    model_parallel_cuda_manual_seed(seed)


def native_torch():
    """Context for hot loops that never name a CUDA device: on a CPU-only machine
    the CPU layer's per-op interception is lifted inside it; on GPUs a no-op."""
    return cpu_compat.suspended()


def shutdown() -> None:
    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    if dist.is_initialized():
        dist.destroy_process_group()
