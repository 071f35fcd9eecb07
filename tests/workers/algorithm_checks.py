"""The first steps of online DPO, RLOO and GRPO through the shared loop at one layout, each
with and without the frozen-trunk reference (launched by tests/test_algorithm_runs.py under
torchrun, one process group for all of them); rank 0 saves every step's metrics and updates.

All start from the same pretrained randomwalks walker and sample at temperature 0.7 with
per-sample seeds, so every layout draws the same samples. Also measured: the temperature
rule (the experience's log-probs are those of the distribution the engine sampled from).
"""

import argparse

import torch
import torch.distributed as dist

from autorlhf_nemo.algorithms import model_class
from autorlhf_nemo.algorithms.trainer import RLTrainer
from autorlhf_nemo.config.compose import compose_config, compose_typed_config
from autorlhf_nemo.config.validate import validate_config
from autorlhf_nemo.parallel.runtime import initialize, shutdown
from autorlhf_nemo.tasks import build_task
from autorlhf_nemo.training.engine import broadcast_from_last_stage

ALGORITHMS = ("online_dpo", "rloo", "grpo")
STEPS = 2


def temperature_check(trainer, model) -> dict:
    """Max |generation's log-prob of the sampled distribution - the experience forward's| at the
    sampling temperature, and the same against the untempered (T = 1) log-probs."""
    prompts = trainer.prompt_ids[:8]
    generation = trainer.generator.generate(prompts, trainer._sampling(seed=5, row_seeds=list(range(16))),
                                            samples_per_prompt=2)
    batch = model.sequence_batch(generation)
    tempered = model.policy_logprobs(batch)
    saved, model.temperature = model.temperature, 1.0
    plain = model.policy_logprobs(batch)
    model.temperature = saved
    if tempered is None:
        return {}
    mask = generation.response_mask.bool()
    sampled = generation.processed_logprobs
    return {"tempered_vs_sampled": (tempered[0] - sampled)[mask].abs().max().item(),
            "untempered_vs_sampled": (plain[0] - sampled)[mask].abs().max().item()}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--hf", required=True, help="the pretrained walker (HF checkpoint)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("overrides", nargs="*", help="the layout")
    args = parser.parse_args()
    common = ["task=randomwalks", "task.graph_seed=1002", f"model.hf_checkpoint={args.hf}",
              f"train.total_steps={STEPS}", "algorithm.prompts_per_step=32", "algorithm.minibatches=2",
              "train.micro_batch_size=8", "task.sampling.temperature=0.7", f"run_dir={args.run_dir}",
              *args.overrides]
    runtime = initialize(compose_typed_config(["algorithm=grpo", *common]))
    results = {"runtime": runtime.describe()}
    for name in ALGORITHMS:
        for unfrozen in (-1, 2):
            overrides = [f"algorithm={name}", *common, f"algorithm.num_layers_unfrozen={unfrozen}"]
            validate_config(compose_config(overrides), world_size=runtime.world_size)
            cfg = compose_typed_config(overrides)
            task = build_task(cfg)
            model = model_class(name)(cfg, runtime, task.init_weights)
            trainer = RLTrainer(model, task, cfg)
            if name == "grpo" and unfrozen == -1:
                results["temperature"] = broadcast_from_last_stage(temperature_check(trainer, model))
            results[(name, unfrozen)] = [trainer.step() for _ in range(STEPS)]
            results[(name, unfrozen, "trunk_cached")] = model.trunk is not None
    if dist.get_rank() == 0:
        torch.save(results, args.out)
    dist.barrier()
    shutdown()


if __name__ == "__main__":
    main()
