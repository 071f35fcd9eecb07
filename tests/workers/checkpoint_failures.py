"""Checkpoint saves that fail, on a tiny Llama at TP2 (2 gloo ranks; launched by
tests/test_run_checkpoint.py). Each rank writes what it saw to <out>/rank<N>.json.

The failures are real: a rank whose file-size limit (RLIMIT_FSIZE, as a full
disk on its node) is lowered gets OSError EFBIG from the kernel when it writes;
a directory where Megatron writes metadata.json makes that write fail.
  step 1   saved
  step 2   rank 1 cannot write more than 1 KB: its shard files fail (inside torch's save)
  step 3   rank 0 cannot write at all: common.pt fails (megatron-core 0.16: a step Megatron runs on
           rank 0 only; 0.19 writes common data through DCP, so there its first shard write fails)
  then     the newest complete checkpoint is step 1 and loads the step-1 weights
  save_model into a directory holding a metadata.json directory (rank 0's last step)
  step 4   saved: every rank is still in step
"""

import argparse
import json
import resource
import signal
from pathlib import Path

import torch
import torch.distributed as dist

from autorlhf_nemo.checkpoint import run_checkpoint
from autorlhf_nemo.checkpoint.dist import save_model
from autorlhf_nemo.config.compose import compose_typed_config
from autorlhf_nemo.models.gpt import build_model
from autorlhf_nemo.parallel.runtime import initialize, shutdown


class Weights:
    """What run_checkpoint saves and loads: here the GPTModel's weights."""

    def __init__(self, gpt):
        self.gpt = gpt

    def sharded_state_dict(self, is_loading: bool = False) -> dict:
        return self.gpt.sharded_state_dict()

    def load_sharded_state_dict(self, state: dict) -> None:
        self.gpt.load_state_dict(state, strict=False)

    def snapshot(self) -> dict:
        return {k: v.detach().clone() for k, v in self.gpt.state_dict().items() if not k.endswith("_extra_state")}


def attempt(save, limited_rank: int, limit: int) -> dict:
    """Run ``save`` with RLIMIT_FSIZE lowered to ``limit`` bytes on ``limited_rank``."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    if dist.get_rank() == limited_rank:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        save()
        return {"raised": None}
    except BaseException as error:  # record whatever today's code raises
        return {"type": type(error).__name__, "message": str(error),
                **{k: str(getattr(error, k)) for k in ("step", "previous", "partial_left") if hasattr(error, k)}}
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", required=True, help="the run's checkpoints directory")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write over the limit fails with EFBIG instead of killing
    root = Path(args.root)
    cfg = compose_typed_config(["model=tiny_llama", "parallel=tp2"])
    initialize(cfg)
    model = Weights(build_model(cfg))
    rank = dist.get_rank()
    report = {}

    def save(step):
        return lambda: run_checkpoint.save(root, step, model, {"step": step}, keep_last=2)

    save(1)()
    step1 = model.snapshot()
    with torch.no_grad():
        for p in model.gpt.parameters():
            p.add_(1.0)
    report["rank1_file_too_large"] = attempt(save(2), limited_rank=1, limit=1000)
    report["rank0_cannot_write"] = attempt(save(3), limited_rank=0, limit=0)

    report["entries"] = sorted(p.name for p in root.iterdir())
    latest = run_checkpoint.latest_complete(root)
    report["latest"] = str(latest)
    run_checkpoint.load(latest, model)
    report["loads_step1_weights"] = all(torch.equal(v, step1[k]) for k, v in model.snapshot().items())

    target = root.parent / "metadata_json_is_a_directory"
    if rank == 0:
        (target / "metadata.json").mkdir(parents=True)
    dist.barrier()
    report["metadata_json"] = attempt(lambda: save_model(model.gpt, target), -1, 0)

    report["step4"] = str(run_checkpoint.save(root, 4, model, {"step": 4}, keep_last=2))
    report["entries_after_step4"] = sorted(p.name for p in root.iterdir())
    (Path(args.out) / f"rank{rank}.json").write_text(json.dumps(report, indent=1))
    shutdown()


if __name__ == "__main__":
    main()
