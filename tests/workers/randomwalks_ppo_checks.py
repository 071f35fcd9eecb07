"""PPO on randomwalks at one layout (launched by tests/test_randomwalks_ppo.py):
pretrain the walker, then PPO against the optimality reward; rank 0 saves the
per-step metrics and the greedy/sampled optimality before and after."""

import argparse
import time

import numpy as np
import torch
import torch.distributed as dist

from autorlhf_nemo.algorithms.ppo.trainer import PPOSettings, PPOTrainer
from autorlhf_nemo.config.compose import compose_config
from autorlhf_nemo.data.randomwalks import EOS, decode, encode, make_random_walks
from autorlhf_nemo.data.randomwalks_pretrain import pretrain
from autorlhf_nemo.generation import SamplingParams
from autorlhf_nemo.models.gpt import build_model
from autorlhf_nemo.models.policy import PolicyValueModel
from autorlhf_nemo.parallel.runtime import initialize, shutdown
from autorlhf_nemo.training.engine import build_optimizer, wrap_for_training


def optimality(trainer, task, greedy):
    prompts = [encode(p) for p in task.prompts] * (1 if greedy else 10)
    params = SamplingParams(max_new_tokens=task.max_length - 1, greedy=greedy, eos_token_ids=[EOS], seed=77)
    out = trainer.generator.generate(prompts, params)
    samples = [decode(p) + decode(r) for p, r in zip(prompts, out.response_ids.tolist())]
    return float(np.mean(task.optimality(samples)))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--ppo-steps", type=int, default=20)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    base = ["model=randomwalks_gpt", "train.seq_length=10", "train.micro_batch_size=32",
            "train.global_batch_size=32"]
    cfg = compose_config([*base, "train.lr=3e-3", *args.overrides])
    runtime = initialize(cfg)
    task = make_random_walks()
    walker, _ = pretrain(cfg, runtime, task, steps=300, batch_size=96)
    weights = walker.module.state_dict()

    ppo_cfg = compose_config([*base, f"train.lr={args.lr}", *args.overrides])
    gpt = build_model(ppo_cfg)
    gpt.load_state_dict(weights)
    reference = build_model(ppo_cfg)
    reference.load_state_dict(weights)
    reference.requires_grad_(False)
    policy = wrap_for_training(PolicyValueModel(gpt, value_head_seed=1), ppo_cfg)
    optimizer = build_optimizer(policy, ppo_cfg)
    settings = PPOSettings(rollouts_per_step=128, ppo_epochs=4, minibatches=4, init_kl_coef=0.05,
                           vf_coef=1.0, sampling={"max_new_tokens": task.max_length - 1, "temperature": 1.0})
    trainer = PPOTrainer(policy, optimizer, reference, settings, vocab_size=ppo_cfg.model.vocab_size,
                         pad_token_id=EOS, eos_token_ids=[EOS], prompts=[encode(p) for p in task.prompts],
                         decode=decode, reward_fn=task.reward_fn, micro_batch_size=32, seed=0)
    before = {"greedy": optimality(trainer, task, True), "sampled": optimality(trainer, task, False)}
    history, start = [], time.perf_counter()
    for _ in range(args.ppo_steps):
        history.append(trainer.step())
        if dist.get_rank() == 0:
            h = history[-1]
            print(f"step {len(history)}: score {h['rollout/score']:.3f} kl {h['rollout/kl']:.3f} "
                  f"vloss {h['learn/value_loss']:.4f}", flush=True)
    after = {"greedy": optimality(trainer, task, True), "sampled": optimality(trainer, task, False)}
    if dist.get_rank() == 0:
        torch.save({"before": before, "after": after, "history": history,
                    "seconds": time.perf_counter() - start}, args.out)
        print("before", before, "after", after)
    shutdown()


if __name__ == "__main__":
    main()
