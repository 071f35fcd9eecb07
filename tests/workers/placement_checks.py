"""Split placement and weight sync (launched by tests/test_placement.py under torchrun).

The learner ranks build the policy at the ``parallel`` layout, the generator ranks at theirs
(``rollout.*``); the generators' weights are then scrambled, so they differ until the sync. After ``WeightSync.sync`` every generator replica's weights, gathered over its
TP group, must equal the learner's, gathered over TP and PP, bit for bit (cast to the
generator's dtype); and where the dtypes agree, a generator replica must decode the same
tokens as the learner (greedy and sampled, same seeds). Rank 0 writes the figures to --out.
"""

import argparse
import json

import torch
import torch.distributed as dist
from megatron.core import parallel_state

from autorlhf_nemo.config.compose import compose_typed_config
from autorlhf_nemo.convert.hf_llama import hf_state_dict_of_stage
from autorlhf_nemo.generation import Generator, SamplingParams
from autorlhf_nemo.models.gpt import build_model
from autorlhf_nemo.parallel.placement import GENERATOR, role_config
from autorlhf_nemo.parallel.runtime import initialize, shutdown
from autorlhf_nemo.rollout.weight_sync import WeightSync


def gathered_models(gpt, cfg, role):
    """{role: [full HF state dict of each replica]} on every rank (world collective)."""
    stage = hf_state_dict_of_stage(gpt, cfg.model)
    writer = parallel_state.get_tensor_model_parallel_rank() == 0
    everyone = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, (role, parallel_state.get_data_parallel_rank(), stage if writer else None))
    models = {}
    for who, replica, part in everyone:
        if part is not None:
            models.setdefault(who, {}).setdefault(replica, {}).update(part)
    return {who: [replicas[r] for r in sorted(replicas)] for who, replicas in models.items()}


def decode(gpt, cfg, prompts, greedy):
    generator = Generator(gpt, cfg.model.vocab_size, pad_token_id=0)
    params = SamplingParams(max_new_tokens=8, temperature=1.0, greedy=greedy, seed=5, eos_token_ids=[],
                            row_seeds=list(range(len(prompts))))
    out = generator.generate(prompts, params)
    return out.response_ids.cpu().tolist() if parallel_state.is_pipeline_last_stage() else None


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--overrides", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    cfg = compose_typed_config(json.loads(args.overrides))
    runtime = initialize(cfg)
    gpt = build_model(role_config(cfg, runtime.role))
    if runtime.role == GENERATOR:  # Megatron's CPU initialisation is layout-independent: make them differ
        torch.manual_seed(100 + dist.get_rank())
        with torch.no_grad():
            for param in gpt.parameters():
                param.normal_()
    sync = WeightSync(runtime.placement, runtime.links, gpt, runtime.device)
    before = gathered_models(gpt, cfg, runtime.role)
    sync.sync()
    after = gathered_models(gpt, cfg, runtime.role)
    learner = after["learner"][0]
    gen_dtype = next(iter(after[GENERATOR][0].values())).dtype
    report = {"names": len(learner), "generator_replicas": len(after[GENERATOR]),
              "differed_before": all(any(not torch.equal(g[k], learner[k].to(gen_dtype)) for k in learner)
                                     for g in before[GENERATOR]),
              "equal_after": [sorted(g) == sorted(learner) and all(torch.equal(g[k], learner[k].to(gen_dtype))
                                                                    for k in learner) for g in after[GENERATOR]],
              "generator_dtype": str(gen_dtype), "sync_seconds": sync.seconds if sync.receiving else None,
              "sync_bytes": sync.bytes if sync.receiving else None}
    if runtime.role != GENERATOR:  # a second policy version: the next sync must carry it, not a cached one
        with torch.no_grad():
            for param in gpt.parameters():
                param.mul_(0.5).add_(0.25)
    sync.sync()
    again = gathered_models(gpt, cfg, runtime.role)
    learner = again["learner"][0]
    report["equal_after_second_sync"] = [all(torch.equal(g[k], learner[k].to(gen_dtype)) for k in learner)
                                         for g in again[GENERATOR]]
    prompts = [[3, 5, 7], [11, 2], [4, 4, 9, 1]]
    tokens = {mode: decode(gpt, role_config(cfg, runtime.role), prompts, mode == "greedy")
              for mode in ("greedy", "sampled")}
    everyone = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, (runtime.role, tokens, report["sync_seconds"], report["sync_bytes"]))
    learner_tokens = next(t for role, t, _, _ in everyone if role == "learner" and t["greedy"] is not None)
    report["tokens_equal"] = [t == learner_tokens for role, t, _, _ in everyone if role == GENERATOR]
    report["sync_seconds"], report["sync_bytes"] = next((s, b) for role, _, s, b in everyone if role == GENERATOR)
    if dist.get_rank() == 0:
        with open(args.out, "w") as f:
            json.dump(report, f)
    shutdown()


if __name__ == "__main__":
    main()
