"""Model weights as Megatron distributed checkpoints, resharded on load.

``model.sharded_state_dict()`` describes each local tensor as a slice of a
global tensor (TP offsets, global layer numbers), so a checkpoint saved at
TP2xPP2 loads at TP1, PP2 or any other layout of the same model.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch.distributed as dist
from megatron.core import dist_checkpointing
from megatron.core.dist_checkpointing.dict_utils import dict_list_map_inplace
from megatron.core.dist_checkpointing.mapping import ShardedTensor, ShardedTensorFactory


def save_model(model, path: str | Path) -> None:
    """Collective: every rank writes its shards of ``model`` into ``path``."""
    path = Path(path)
    if dist.get_rank() == 0:
        path.mkdir(parents=True, exist_ok=True)
    dist.barrier()
    dist_checkpointing.save(model.sharded_state_dict(), str(path))


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
