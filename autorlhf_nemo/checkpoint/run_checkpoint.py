"""Run checkpoints: atomic saves, keep the last N, exact resume.

    <run_dir>/checkpoints/step_000012/
        dist/        Megatron distributed checkpoint: policy (trunk + value head) and
                     optimizer shards, from every rank (any PP/TP/DP layout)
        state.pt     replicated state: step, trainer RNG, LR scheduler, KL controller, ...
        COMPLETE     manifest {file: size}, written last

A save is written to ``step_000012.partial`` by all ranks; once every rank is
done, rank 0 records the manifest and renames the directory (atomic on POSIX),
then deletes all but the newest ``keep_last``. A crash mid-save leaves only a
``.partial`` directory, which is never loaded. On resume each candidate's
manifest is checked (every file present at its recorded size), so a
checkpoint truncated afterwards is skipped with a warning and the previous
one used.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import torch
import torch.distributed as dist
from megatron.core import dist_checkpointing

_STEP_DIR = re.compile(r"^step_(\d+)$")
MANIFEST = "COMPLETE"


def step_dir(root: Path, step: int) -> Path:
    return Path(root) / f"step_{step:06d}"


def _manifest(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_size for p in sorted(folder.rglob("*")) if p.is_file()}


def verify(folder: Path) -> str | None:
    """None if ``folder`` is a complete checkpoint, else what is wrong with it."""
    marker = folder / MANIFEST
    if not marker.is_file():
        return "no COMPLETE manifest (the save did not finish)"
    try:
        expected = json.loads(marker.read_text())
    except ValueError:
        return "the COMPLETE manifest is unreadable"
    for name, size in expected.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != size:
            return f"{name} has {path.stat().st_size} bytes, the manifest says {size} (truncated)"
    return None


def latest_complete(root: Path, log=print) -> Path | None:
    """The newest complete checkpoint under ``root``; incomplete ones are reported and skipped."""
    root = Path(root)
    if not root.is_dir():
        return None
    steps = sorted((int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_DIR.match(p.name)))
    for _, folder in reversed(steps):
        problem = verify(folder)
        if problem is None:
            return folder
        log(f"checkpoint {folder} is incomplete: {problem}; trying the previous one")
    return None


def save(root: Path, step: int, model, state: dict, keep_last: int) -> Path:
    """Collective. ``model``: has ``sharded_state_dict()``; ``state``: replicated picklable dict."""
    root, final = Path(root), step_dir(root, step)
    partial = final.with_name(final.name + ".partial")
    if dist.get_rank() == 0:
        shutil.rmtree(partial, ignore_errors=True)
        (partial / "dist").mkdir(parents=True)
    dist.barrier()
    dist_checkpointing.save(model.sharded_state_dict(), str(partial / "dist"))
    if dist.get_rank() == 0:
        torch.save(state, partial / "state.pt")
    dist.barrier()  # every rank's shards are written
    if dist.get_rank() == 0:
        manifest = _manifest(partial)
        with open(partial / MANIFEST, "w") as f:
            json.dump(manifest, f)
            f.flush()
            os.fsync(f.fileno())
        shutil.rmtree(final, ignore_errors=True)
        os.replace(partial, final)
        _prune(root, keep_last)
    dist.barrier()
    return final


def _prune(root: Path, keep_last: int) -> None:
    complete = sorted(p for p in root.iterdir() if _STEP_DIR.match(p.name) and verify(p) is None)
    for old in complete[:-keep_last] if keep_last > 0 else []:
        shutil.rmtree(old, ignore_errors=True)


def load(folder: Path, model) -> dict:
    """Collective: fill ``model`` (``sharded_state_dict(is_loading=True)`` /
    ``load_sharded_state_dict``) from ``folder``; returns the replicated state."""
    folder = Path(folder)
    problem = verify(folder)
    if problem is not None:
        raise FileNotFoundError(f"checkpoint {folder} cannot be loaded: {problem}")
    sharded = model.sharded_state_dict(is_loading=True)
    model.load_sharded_state_dict(dist_checkpointing.load(sharded, str(folder / "dist")))
    return torch.load(folder / "state.pt", weights_only=False)
