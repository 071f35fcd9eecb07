"""Learner -> generator weight sync (rollout.placement=split) on SmolLM2-135M's shape: time and bytes
per sync, beside a plain broadcast of the same bytes as one buffer over the same ranks (the baseline:
what the wire alone costs). Launch under torchrun (rank 0 prints):

    .venv/bin/python -m torch.distributed.run --standalone --nproc_per_node=2 bench/weight_sync.py
    .venv/bin/python -m torch.distributed.run --standalone --nproc_per_node=3 bench/weight_sync.py parallel=tp2
    ... bench/weight_sync.py rollout.generator_dtype=bfloat16

Random weights (the sync moves bits, whatever they are). Extra arguments are config overrides.
"""

import sys
import time

import torch
import torch.distributed as dist

from autorlhf_nemo.config.compose import compose_typed_config
from autorlhf_nemo.models.gpt import build_model
from autorlhf_nemo.parallel.placement import role_config
from autorlhf_nemo.parallel.runtime import initialize, shutdown
from autorlhf_nemo.rollout.weight_sync import WeightSync


def main(repeats: int = 5):
    cfg = compose_typed_config(["model=smollm2_135m", "model.hf_checkpoint=null", "algorithm=online_dpo",
                                "task=custom", "rollout.placement=split", "rollout.generator_ranks=1",
                                "parallel.world_size=null", *sys.argv[1:]])
    runtime = initialize(cfg)
    gpt = build_model(role_config(cfg, runtime.role))
    sync = WeightSync(runtime.placement, runtime.links, gpt, runtime.device)
    times, moved = [], 0
    for _ in range(repeats):
        dist.barrier()
        start = time.perf_counter()
        sync.sync()
        dist.barrier()
        times.append(time.perf_counter() - start)
        moved = max(moved, sync.bytes)
    # baseline: one flat buffer of the same size, broadcast from rank 0 to the generator over the world
    sizes = [torch.tensor([float(sync.bytes if sync.receiving else 0)], device=runtime.device)]
    dist.all_reduce(sizes[0], op=dist.ReduceOp.MAX)
    flat = torch.empty(int(sizes[0].item()) // 4, dtype=torch.float32, device=runtime.device)
    base = []
    for _ in range(repeats):
        dist.barrier()
        start = time.perf_counter()
        dist.broadcast(flat, src=0)
        dist.barrier()
        base.append(time.perf_counter() - start)
    if dist.get_rank() == 0:
        steady, plain = min(times[1:] or times), min(base[1:] or base)
        print(f"weight sync {runtime.placement.describe()}, learner {cfg.model.params_dtype} -> generator "
              f"{cfg.rollout.generator_dtype or cfg.model.params_dtype}: {sizes[0].item() / 2**20:.1f} MiB per sync, "
              f"{steady * 1e3:.0f} ms steady (first {times[0] * 1e3:.0f} ms); one flat broadcast of the same bytes: "
              f"{plain * 1e3:.0f} ms ({steady / plain:.2f}x)", flush=True)
    shutdown()


if __name__ == "__main__":
    main()
