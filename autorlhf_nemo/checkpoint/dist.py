"""Model weights as Megatron distributed checkpoints, resharded on load.

``model.sharded_state_dict()`` describes each local tensor as a slice of a
global tensor (TP offsets, global layer numbers), so a checkpoint saved at
TP2xPP2 loads at TP1, PP2 or any other layout of the same model.

Saves (:func:`save_sharded`) write Megatron's ``torch_dist`` format from this
process: Megatron's own writer starts a ``spawn`` multiprocessing Manager
(which re-imports the user's ``__main__`` script, so an unguarded script dies
with EOFError) and forks a writer process per file. Here each file is written
by a thread, and a failure on any rank is raised on every rank.
"""

from __future__ import annotations

import dataclasses
import os
import queue
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from megatron.core import dist_checkpointing
from megatron.core.dist_checkpointing.dict_utils import dict_list_map_inplace
from megatron.core.dist_checkpointing.mapping import ShardedTensor, ShardedTensorFactory
from megatron.core.dist_checkpointing.strategies.filesystem_async import (
    FileSystemWriterAsync,
    _split_by_size_and_type,
)
from megatron.core.dist_checkpointing.strategies.torch import (
    MCoreSavePlanner,
    TorchDistSaveShardedStrategy,
    _replace_state_dict_keys_with_sharded_keys,
    mcore_to_pyt_state_dict,
)
from torch.distributed.checkpoint import CheckpointException
from torch.distributed.checkpoint.filesystem import DEFAULT_SUFFIX
from torch.distributed.checkpoint.planner import WriteItemType
from torch.futures import Future


class CheckpointWriteError(RuntimeError):
    """Writing a distributed checkpoint failed on at least one rank; raised on every rank.

    ``path``: the checkpoint directory; ``failures``: one "rank N: <exception>" per failed rank."""

    def __init__(self, path: Path, failures: list[str]):
        self.path, self.failures = Path(path), failures
        super().__init__(f"writing the checkpoint {path} failed: " + "; ".join(failures))


def raise_if_any_rank_failed(error: BaseException | None, path: str | Path) -> None:
    """Collective: every rank says whether its part failed (``error``); if any did, every rank
    raises :class:`CheckpointWriteError` naming each failed rank's exception."""
    mine = {}
    if isinstance(error, CheckpointException):  # torch's save already gathered every rank's failure
        mine = {rank: _describe(exc) for rank, (exc, _trace) in error.failures.items()}
    elif error is not None:
        mine = {dist.get_rank(): _describe(error)}
    everyone = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, mine)
    failures = {rank: text for part in everyone for rank, text in part.items()}
    if failures:
        raise CheckpointWriteError(path, [f"rank {rank}: {failures[rank]}" for rank in sorted(failures)]) from error


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


class _ThreadedWriter(FileSystemWriterAsync):
    """Megatron's file writer with the synchronous ``write_data`` that torch's ``dcp.save`` calls:
    the rank's items in ``thread_count`` files (Megatron's split by size), each file written by
    Megatron's ``write_preloaded_data`` in a thread of this process. A failed file raises."""

    def write_data(self, plan, planner) -> Future:
        buckets = [items for items in _split_by_size_and_type(self.thread_count, plan.items) if items]
        names = [f"{plan.storage_data.prefix}{i}{DEFAULT_SUFFIX}" for i in range(len(buckets))]
        with ThreadPoolExecutor(max_workers=max(len(buckets), 1)) as pool:  # waits for every thread
            written = list(pool.map(lambda name, items: self._write_file(name, items, planner), names, buckets))
        future = Future()
        future.set_result([result for results in written for result in results])
        return future

    def _write_file(self, name: str, items: list, planner) -> list:
        data = [(item, planner.resolve_data(item)) for item in items]
        bucket = (os.path.join(self.checkpoint_dir, name), name,
                  ([(item, d) for item, d in data if item.type == WriteItemType.BYTE_IO],
                   [(item, _host_copy(d)) for item, d in data if item.type != WriteItemType.BYTE_IO]))
        results, done = queue.Queue(), queue.Queue()
        done.put(name)  # write_preloaded_data takes one token from here when it finishes
        transforms = [self.transforms] if hasattr(self, "transforms") else []
        self.write_preloaded_data(transforms, 0, bucket, results, done, use_fsync=True)
        _, outcome = results.get()  # the write results, or the exception the write raised
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome


def _host_copy(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` on the CPU holding only its own elements (a GPU tensor is copied; a CPU view
    is cloned, as torch.save would write the whole storage it views)."""
    tensor = tensor.detach().to("cpu")
    return tensor.clone() if tensor.untyped_storage().nbytes() != tensor.nbytes else tensor


class InProcessSaveStrategy(TorchDistSaveShardedStrategy):
    """Megatron's default save strategy (``torch_dist`` version 1: same planner, same files,
    loaded by the default ``dist_checkpointing.load`` at any layout), saved synchronously by
    torch's ``dcp.save`` with :class:`_ThreadedWriter`: no process is forked or spawned, and
    torch's save raises a failure of any rank on every rank."""

    def __init__(self):
        super().__init__("torch_dist", 1)
        self.wrote_shards = False

    def save(self, sharded_state_dict, checkpoint_dir) -> None:
        # Before this, Megatron's save ran steps on rank 0 only (checking the sharding; in
        # megatron-core 0.16 also writing common.pt): a rank 0 that failed there meets the others here.
        raise_if_any_rank_failed(None, checkpoint_dir)
        state, _, _ = _replace_state_dict_keys_with_sharded_keys(sharded_state_dict, self.keep_only_main_replica)
        dcp.save(mcore_to_pyt_state_dict(state, False),
                 storage_writer=_ThreadedWriter(checkpoint_dir, thread_count=self.thread_count),
                 planner=MCoreSavePlanner(dedup_replicated_tensors=not self.keep_only_main_replica,
                                          flatten_state_dict=False))
        self.wrote_shards = True


def save_sharded(sharded_state_dict: dict, path: str | Path) -> None:
    """Collective: ``dist_checkpointing.save`` of ``sharded_state_dict`` into the directory
    ``path`` (created) with :class:`InProcessSaveStrategy`. If any rank fails, every rank
    raises :class:`CheckpointWriteError`; no rank returns as if the save had succeeded."""
    path = Path(path)
    error = None
    if dist.get_rank() == 0:
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            error = exc
    raise_if_any_rank_failed(error, path)
    strategy = InProcessSaveStrategy()
    try:
        dist_checkpointing.save(sharded_state_dict, str(path), sharded_strategy=strategy)
    except CheckpointWriteError:
        raise  # from the strategy's first step: every rank raises it
    except (Exception, CheckpointException) as exc:
        error = exc
        if strategy.wrote_shards and dist.get_rank() == 0:
            # Rank 0 failed writing metadata.json, the last step; the other ranks wait in the
            # barrier Megatron's save ends with.
            dist.barrier()
    raise_if_any_rank_failed(error, path)


def save_model(model, path: str | Path) -> None:
    """Collective: every rank writes its shards of ``model`` into ``path``."""
    save_sharded(model.sharded_state_dict(), path)


def load_model(model, path: str | Path) -> None:
    """Collective: fill ``model`` (any layout) from a checkpoint saved at any layout."""
    path = Path(path)
    if not dist_checkpointing.check_is_distributed_checkpoint(str(path)):
        raise FileNotFoundError(f"{path} is not a Megatron distributed checkpoint (no metadata.json)")
    state = dist_checkpointing.load(model.sharded_state_dict(), str(path))
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("_extra_state")]
    if missing or unexpected:
        raise RuntimeError(f"checkpoint {path} does not match the model: missing={missing}, "
                           f"unexpected={unexpected}")


def per_layer_keys(sharded_state_dict: dict) -> dict:
    """Give each layer of a layer-stacked ShardedTensor its own key (``<key>.layer<N>``).

    Megatron stacks decoder layers into one global tensor per parameter name and
    requires every slice of it to be saved. Optimizer states exist only for
    trained parameters, so with a frozen trunk the stacked optimizer tensors
    would have holes; one key per global layer has none. Keys stay layout
    independent (N is the global layer index), so checkpoints still reshard.
    """

    def split(value):
        if isinstance(value, ShardedTensorFactory):  # e.g. SwiGLU's fc1: built into two tensors at save
            build = value.build_fn
            return dataclasses.replace(value, build_fn=lambda *a, **k: per_layer_keys(build(*a, **k)))
        if not isinstance(value, ShardedTensor) or value.prepend_axis_num == 0:
            return value
        n = value.prepend_axis_num
        layer = ".".join(str(o) for o in value.global_offset[:n])
        return dataclasses.replace(value, key=f"{value.key}.layer{layer}", global_shape=value.global_shape[n:],
                                   global_offset=value.global_offset[n:],
                                   axis_fragmentations=value.axis_fragmentations[n:], prepend_axis_num=0)

    return dict_list_map_inplace(split, sharded_state_dict)
