"""Three PPO optimizer steps on fixed experience at one layout (launched by
tests/test_ppo_step.py under torchrun); rank 0 saves the metrics of each step.

The experience is the same global batch at every layout: 8 prompts and
responses of different lengths, sequence scores -1..1, made by
``ppo_experience``: old log-probs and values from a forward pass of the
policy-value model, a frozen reference model loaded from the same checkpoint
(so the KL penalty must be exactly 0), GAE, advantages whitened over DP.
"""

import argparse

import torch
import torch.distributed as dist
from megatron.core import parallel_state

from autorlhf_nemo.algorithms.batch import make_sequence_batch
from autorlhf_nemo.algorithms.experience import response_forward
from autorlhf_nemo.algorithms.ppo.rollout import ppo_experience
from autorlhf_nemo.algorithms.ppo.step import ppo_forward_step
from autorlhf_nemo.config.compose import compose_typed_config
from autorlhf_nemo.convert.hf_llama import load_hf_checkpoint
from autorlhf_nemo.generation.engine import left_pad
from autorlhf_nemo.models.gpt import build_model
from autorlhf_nemo.models.policy import PolicyModel
from autorlhf_nemo.parallel.runtime import initialize, shutdown
from autorlhf_nemo.training.batching import data_parallel_microbatches
from autorlhf_nemo.training.engine import (broadcast_from_last_stage, build_optimizer, train_step,
                                           wrap_for_training)

N, MICRO = 8, 2


def fixed_experience(vocab):
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(1, vocab, (int(n),), generator=g).tolist()
               for n in torch.randint(2, 7, (N,), generator=g)]
    lengths = torch.randint(3, 9, (N,), generator=g)
    prompt_ids, prompt_mask = left_pad(prompts, 0)
    response_ids = torch.randint(1, vocab, (N, int(lengths.max())), generator=g)
    response_mask = (torch.arange(response_ids.shape[1])[None] < lengths[:, None]).long()
    return prompt_ids, prompt_mask, response_ids * response_mask, response_mask


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--hf", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    cfg = compose_typed_config(args.overrides)
    runtime = initialize(cfg)
    m = cfg.model
    vocab = m.vocab_size
    gpt = build_model(cfg)
    load_hf_checkpoint(gpt, args.hf, m)
    model = PolicyModel(gpt, value_head_seed=7)
    ddp = wrap_for_training(model, cfg)
    optimizer = build_optimizer(ddp, cfg)

    per_rank = N // runtime.dp_size
    rows = slice(runtime.dp_rank * per_rank, (runtime.dp_rank + 1) * per_rank)
    prompt_ids, prompt_mask, response_ids, response_mask = (t[rows] for t in fixed_experience(vocab))
    multiple = runtime.tp_size if cfg.parallel.sequence_parallel else 1

    # Rollout: policy log-probs and values, a frozen reference (same initial weights), rewards, GAE.
    reference = build_model(cfg)
    load_hf_checkpoint(reference, args.hf, m)
    batch = make_sequence_batch(prompt_ids, prompt_mask, response_ids, response_mask, multiple)
    policy_out = response_forward(ddp, batch, vocab, MICRO, with_values=True)
    reference_out = response_forward(reference, batch, vocab, MICRO)
    result = {}
    if parallel_state.is_pipeline_last_stage():
        (logprobs, values), ref_logprobs = policy_out, reference_out[0]
        experience, result["rollout"] = ppo_experience(torch.linspace(-1, 1, N)[rows], response_mask, logprobs,
                                                       values, ref_logprobs, kl_coef=0.1, gamma=1.0, lam=0.95)
        result["kl_abs_max"] = experience.kl.abs().max().item()
        batch.update(experience.per_token())
    seq = batch["tokens"].shape[1]  # P + R - 1, padded to the SP multiple
    micro = data_parallel_microbatches(batch, 0, 1, MICRO)
    step = ppo_forward_step(vocab, clip_ratio=0.2, clip_value=0.2, vf_coef=0.5, entropy_coef=0.01)
    result["steps"] = []
    for _ in range(3):
        r = train_step(ddp, optimizer, micro, len(micro), step, seq, MICRO)
        result["steps"].append({**r.metrics, "grad_norm": float(r.grad_norm)})
    result = broadcast_from_last_stage(result)
    if dist.get_rank() == 0:
        torch.save(result, args.out)
    shutdown()


if __name__ == "__main__":
    main()
