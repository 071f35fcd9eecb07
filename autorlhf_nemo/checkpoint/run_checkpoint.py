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

A save that fails (a full disk, an I/O error on any rank) raises
:class:`CheckpointSaveError` on every rank, after rank 0 removed the
``.partial`` directory; the checkpoints saved before are untouched. The
shards are written by this process (``dist.save_sharded``), whatever the
user's ``__main__`` module looks like.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from megatron.core import dist_checkpointing

from autorlhf_nemo.checkpoint.dist import CheckpointWriteError, raise_if_any_rank_failed, save_sharded

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


class CheckpointSaveError(RuntimeError):
    """A run checkpoint could not be saved; raised on every rank, with the same message.

    Nothing saved before was touched. Attributes: ``step``; ``directory`` (where the checkpoint
    was going); ``failures``: "rank N: <exception>" for each rank that failed; ``previous``: the
    newest complete checkpoint, intact and loadable (None if there is none); ``partial_left``:
    the unfinished directory if it could not be removed, else None."""

    def __init__(self, step: int, directory: Path, failures: list[str], previous: Path | None,
                 partial_left: Path | None, free_bytes: int | None = None):
        self.step, self.directory, self.failures = step, directory, failures
        self.previous, self.partial_left = previous, partial_left
        partial = directory.with_name(directory.name + ".partial")
        removed = (f"The unfinished {partial} could not be removed: delete it" if partial_left
                   else f"The unfinished {partial} was removed")
        kept = (f"the newest complete checkpoint, {previous}, is intact: rerunning with checkpoint.resume=true "
                f"continues from it" if previous else
                "there is no earlier complete checkpoint: a rerun starts from step 0")
        free = f"; {free_bytes / 2**30:.2f} GiB free there now" if free_bytes is not None else ""
        super().__init__(f"saving the step-{step} checkpoint into {directory} failed: {'; '.join(failures)}. "
                         f"{removed}; {kept}. Fix the cause (disk space, quota or permissions of "
                         f"{directory.parent}{free}) and rerun.")


def save(root: Path, step: int, model, state: dict, keep_last: int) -> Path:
    """Collective. ``model``: has ``sharded_state_dict()``; ``state``: replicated picklable dict.

    If any rank fails, every rank raises :class:`CheckpointSaveError`; the ``.partial``
    directory is removed and the checkpoints saved before are untouched."""
    root, final = Path(root), step_dir(root, step)
    partial = final.with_name(final.name + ".partial")
    rank0 = dist.get_rank() == 0
    if rank0:
        shutil.rmtree(partial, ignore_errors=True)  # left by a save cut short
    try:
        save_sharded(model.sharded_state_dict(), partial / "dist")  # creates partial/dist
        error = None
        if rank0:
            try:
                torch.save(state, partial / "state.pt")
                _seal(partial, final)
            except Exception as exc:
                error = exc
        raise_if_any_rank_failed(error, partial)
    except CheckpointWriteError as error:  # raised on every rank
        found = [None, None, None]  # rank 0's view: partial left, previous checkpoint, free bytes
        if rank0:
            shutil.rmtree(partial, ignore_errors=True)
            found = [partial if partial.exists() else None, latest_complete(root, log=silent),
                     _free_bytes(root)]
        dist.broadcast_object_list(found, src=0)
        raise CheckpointSaveError(step, final, error.failures, previous=found[1], partial_left=found[0],
                                  free_bytes=found[2]) from error
    if rank0:  # the checkpoint is complete: failing to delete older ones is only worth a warning
        try:
            _prune(root, keep_last)
        except OSError as exc:
            print(f"warning: could not delete checkpoints older than the last {keep_last} in {root}: {exc}",
                  file=sys.stderr)
    return final


def _seal(partial: Path, final: Path) -> None:
    """Record the manifest of ``partial``, then rename it to ``final`` (atomic on POSIX)."""
    manifest = _manifest(partial)
    with open(partial / MANIFEST, "w") as f:
        json.dump(manifest, f)
        f.flush()
        os.fsync(f.fileno())
    shutil.rmtree(final, ignore_errors=True)
    os.replace(partial, final)


def _free_bytes(path: Path) -> int:
    while not path.exists():  # the checkpoint directory may be what could not be created
        path = path.parent
    return shutil.disk_usage(path).free


def silent(*args, **kwargs) -> None:
    """A ``log`` that prints nothing (ranks other than 0)."""


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
