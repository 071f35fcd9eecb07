"""The reference model sharing the policy's frozen trunk, at one layout
(launched by tests/test_reference.py). Rank 0 gathers, per rank: which
parameters the reference shares with the policy, which the policy trains,
and whether an LM training step of the policy moved the reference."""

import argparse

import torch
import torch.distributed as dist

from autorlhf_nemo.config.compose import compose_typed_config
from autorlhf_nemo.models.gpt import build_model
from autorlhf_nemo.models.reference import ReferenceModel, freeze_trunk
from autorlhf_nemo.parallel.runtime import initialize, shutdown
from autorlhf_nemo.training.engine import build_optimizer, train_step, wrap_for_training
from autorlhf_nemo.training.lm import lm_forward_step, make_lm_batch


def snapshot(module) -> dict:
    return {name: p.detach().clone() for name, p in module.named_parameters()}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--unfrozen", type=int, required=True)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    cfg = compose_typed_config(["train.seq_length=8", "train.micro_batch_size=2", "train.global_batch_size=2",
                          "train.lr=1e-2", *args.overrides])
    initialize(cfg)
    gpt = build_model(cfg)
    reference = ReferenceModel(gpt, cfg, args.unfrozen, offload=True)
    freeze_trunk(gpt, args.unfrozen)
    before = snapshot(reference.model)
    policy = wrap_for_training(gpt, cfg)
    optimizer = build_optimizer(policy, cfg)
    tokens = torch.randint(1, cfg.model.vocab_size, (2, 9), generator=torch.Generator().manual_seed(0))
    train_step(policy, optimizer, [make_lm_batch(tokens)], 1, lm_forward_step(cfg.model.vocab_size), 8, 2)
    after = snapshot(reference.model)
    own = {id(p) for p in gpt.parameters()}
    report = {
        "shared": sorted(n for n, p in reference.model.named_parameters() if id(p) in own),
        "trainable": sorted(n for n, p in gpt.named_parameters() if p.requires_grad),
        "reference_moved": sorted(n for n in before if not torch.equal(before[n], after[n])),
        "policy_moved": sorted(n for n, p in gpt.named_parameters() if not torch.equal(p.detach(), before[n])),
        "reference_params": sum(p.numel() for p in reference.model.parameters()),
        "shared_numel": reference.shared_parameters(gpt),
        "offload": reference.offload,
        "reference_device": str(next(reference.model.parameters()).device),
    }
    reports = [None] * dist.get_world_size()
    dist.all_gather_object(reports, report)
    if dist.get_rank() == 0:
        torch.save(reports, args.out)
    shutdown()


if __name__ == "__main__":
    main()
