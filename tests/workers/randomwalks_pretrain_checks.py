"""Pretrain the randomwalks policy at one layout and score its own walks
(launched by tests/test_randomwalks_pretrain.py); rank 0 saves the figures."""

import argparse
import time

import numpy as np
import torch
import torch.distributed as dist

from autorlhf_nemo.config.compose import compose_typed_config
from autorlhf_nemo.convert.hf_llama import export_hf_checkpoint
from autorlhf_nemo.data.randomwalks import EOS, decode, encode, make_random_walks
from autorlhf_nemo.data.randomwalks_pretrain import pretrain
from autorlhf_nemo.generation import Generator, SamplingParams
from autorlhf_nemo.parallel.runtime import initialize, shutdown


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--export", help="also write the pretrained walker here as an HF checkpoint")
    parser.add_argument("--graph-seed", type=int, default=1002, help="the randomwalks graph (1002: the figures "
                        "the tests assert; 1000: trlX's benchmark)")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    cfg = compose_typed_config(["model=randomwalks_gpt", "train.seq_length=10", *args.overrides])
    runtime = initialize(cfg)
    task = make_random_walks(seed=args.graph_seed)
    start = time.perf_counter()
    model, losses = pretrain(cfg, runtime, task, steps=args.steps, batch_size=100)
    seconds = time.perf_counter() - start
    generator = Generator(model, cfg.model.vocab_size, EOS)
    prompts = [encode(p) for p in task.prompts] * 10  # 10 samples per start node
    out = generator.generate(prompts, SamplingParams(max_new_tokens=task.max_length - 1, temperature=1.0,
                                                     eos_token_ids=[EOS], seed=3))
    samples = [p + decode(r) for p, r in zip(task.prompts * 10, out.response_ids.tolist())]
    greedy = generator.generate([encode(p) for p in task.prompts],
                                SamplingParams(max_new_tokens=task.max_length - 1, greedy=True,
                                               eos_token_ids=[EOS]))
    greedy_samples = [p + decode(r) for p, r in zip(task.prompts, greedy.response_ids.tolist())]
    result = {"losses": losses, "seconds": seconds,
              "sampled_optimality": float(np.mean(task.optimality(samples))),
              "sampled_valid": float(np.mean([task.path_length(s) < task.max_length for s in samples])),
              "greedy_optimality": float(np.mean(task.optimality(greedy_samples))),
              "data_optimality": float(np.mean(task.optimality(task.walks))), "samples": samples[:20]}
    if args.export:
        export_hf_checkpoint(model.module, cfg.model, args.export)
    if dist.get_rank() == 0:
        torch.save(result, args.out)
        print({k: v for k, v in result.items() if k != "losses"}, "first/last loss", losses[0], losses[-1])
    shutdown()


if __name__ == "__main__":
    main()
