"""One layout, many checks (launched by tests/test_layouts.py under torchrun).

From an HF checkpoint (or a Megatron distributed checkpoint) at the layout
given by Hydra overrides, it records on rank 0:
  logits      full-vocabulary logits of a fixed batch (gathered over TP/PP/DP)
  loss, grad_norm, weights_after
              one LM training step through forward_backward_func + optimizer
  weights     (--no-train) the loaded weights, gathered back as an HF state dict
and optionally saves a distributed checkpoint of the loaded weights.
"""

import argparse

import torch
import torch.distributed as dist
from megatron.core import parallel_state
from megatron.core.tensor_parallel import gather_from_tensor_model_parallel_region

from autorlhf_nemo.checkpoint.dist import load_model, save_model
from autorlhf_nemo.config.compose import compose_typed_config
from autorlhf_nemo.convert.hf_llama import (
    export_hf_checkpoint,
    gather_hf_state_dict,
    load_hf_checkpoint,
)
from autorlhf_nemo.models.gpt import build_model
from autorlhf_nemo.parallel.runtime import initialize, shutdown
from autorlhf_nemo.training.batching import data_parallel_microbatches
from autorlhf_nemo.training.engine import build_optimizer, forward_only, train_step, wrap_for_training
from autorlhf_nemo.training.lm import lm_forward_step, make_lm_batch


def gather_over_dp(rows: torch.Tensor | None) -> torch.Tensor | None:
    """Concatenate each DP rank's rows (held on the last stage, TP rank 0) on rank 0."""
    parts = [None] * dist.get_world_size()
    dist.all_gather_object(parts, rows)
    if dist.get_rank() != 0:
        return None
    # One holder per DP rank (last stage, TP rank 0); Megatron's rank order puts
    # DP outside TP, so global-rank order is DP order.
    holders = [p for p in parts if p is not None]
    return torch.cat(holders, dim=0)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--hf", help="HF checkpoint directory to load")
    parser.add_argument("--load-dist", help="distributed checkpoint to load instead")
    parser.add_argument("--save-dist", help="save a distributed checkpoint of the loaded weights")
    parser.add_argument("--batch", required=True, help="torch file with tokens [n, s+1]")
    parser.add_argument("--out", required=True)
    parser.add_argument("--export", help="export the loaded weights as an HF checkpoint here")
    parser.add_argument("--no-train", action="store_true")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()

    cfg = compose_typed_config(args.overrides)
    runtime = initialize(cfg)
    model = build_model(cfg)
    if args.load_dist:
        load_model(model, args.load_dist)
    else:
        load_hf_checkpoint(model, args.hf, cfg.model)
    if args.save_dist:
        save_model(model, args.save_dist)
    if args.export:
        export_hf_checkpoint(model, cfg.model, args.export)

    tokens = torch.load(args.batch)
    batch = make_lm_batch(tokens)
    micro_size = cfg.train.micro_batch_size
    micro = data_parallel_microbatches(batch, runtime.dp_rank, runtime.dp_size, micro_size)
    seq = tokens.shape[1] - 1
    vocab = cfg.model.vocab_size
    step = lm_forward_step(vocab)

    outputs = forward_only(model, micro, len(micro), step, seq, micro_size)
    logits = None
    if parallel_state.is_pipeline_last_stage():
        full = torch.cat([gather_from_tensor_model_parallel_region(o) for o in outputs], dim=0)
        if runtime.tp_rank == 0:
            logits = full[..., :vocab].float()
    result = {"logits": gather_over_dp(logits), "runtime": runtime.describe()}

    if args.no_train:
        result["weights"] = gather_hf_state_dict(model, cfg.model)
    else:
        ddp = wrap_for_training(model, cfg)
        optimizer = build_optimizer(ddp, cfg)
        step_result = train_step(ddp, optimizer, micro, len(micro), step, seq, micro_size)
        result["loss"] = step_result.metrics["lm_loss"]
        result["grad_norm"] = float(step_result.grad_norm)
        result["weights_after"] = gather_hf_state_dict(model, cfg.model)
    if dist.get_rank() == 0:
        torch.save(result, args.out)
    shutdown()


if __name__ == "__main__":
    main()
