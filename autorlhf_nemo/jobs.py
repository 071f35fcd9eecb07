"""What ``python -m autorlhf_nemo`` runs once the config is composed.

Until an algorithm is selected the job builds the configured model at the
configured layout, loads its checkpoint, and reports per-rank parameter
counts and the language-model loss on a sample prompt: a smoke test of a
layout on real hardware before a long run.
"""

from __future__ import annotations

import logging

from autorlhf_nemo.config.validate import to_container


def run_job(cfg) -> None:
    logging.getLogger("megatron").setLevel(logging.WARNING)
    import torch.distributed as dist

    from autorlhf_nemo.convert import resolve_hf_checkpoint
    from autorlhf_nemo.convert.hf_llama import load_hf_checkpoint
    from autorlhf_nemo.models.gpt import build_model
    from autorlhf_nemo.parallel.runtime import initialize, shutdown

    runtime = initialize(cfg)  # validates the layout before any process group starts
    values = to_container(cfg)
    model = build_model(cfg)
    if values["model"]["hf_checkpoint"]:
        load_hf_checkpoint(model, resolve_hf_checkpoint(values["model"]["hf_checkpoint"]),
                           values["model"])
    local = sum(p.numel() for p in model.parameters())
    # Norm weights are replicated on every TP rank: count them once per replica.
    unique = sum(p.numel() for p in model.parameters()
                 if getattr(p, "tensor_model_parallel", False) or runtime.tp_rank == 0)
    counts = [None] * runtime.world_size
    dist.all_gather_object(counts, (runtime.rank, runtime.tp_rank, runtime.pp_rank, runtime.dp_rank,
                                    local, unique))
    if runtime.rank == 0:
        print(f"layout: TP{runtime.tp_size} x PP{runtime.pp_size} x DP{runtime.dp_size} "
              f"on {runtime.world_size} rank(s), backend {runtime.backend}, device {runtime.device}")
        for rank, tp, pp, dp, n, _ in counts:
            print(f"  rank {rank}: tp={tp} pp={pp} dp={dp} parameters={n:,}")
        replica = sum(u for _, _, _, dp, _, u in counts if dp == 0)
        print(f"parameters per model replica: {replica:,}")
    dist.barrier()
    shutdown()
