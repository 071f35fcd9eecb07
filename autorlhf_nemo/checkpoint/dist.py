"""Model weights as Megatron distributed checkpoints, resharded on load.

``model.sharded_state_dict()`` describes each local tensor as a slice of a
global tensor (TP offsets, global layer numbers), so a checkpoint saved at
TP2xPP2 loads at TP1, PP2 or any other layout of the same model.
"""

from __future__ import annotations

from pathlib import Path

import torch.distributed as dist
from megatron.core import dist_checkpointing


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
