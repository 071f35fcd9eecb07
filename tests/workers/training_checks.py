"""Training-step details on one process (launched by tests/test_training_step.py):

  lr_schedule   fp16 tiny Llama with Megatron's loss scaling: an update skipped for
                non-finite gradients leaves the LR scheduler where it was
  entropy       the PPO step's entropy enters autograd only when entropy_coef != 0
"""

import argparse

import torch
from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

from autorlhf_nemo.algorithms.batch import make_sequence_batch
from autorlhf_nemo.algorithms.ppo import step as ppo_step
from autorlhf_nemo.config.compose import compose_typed_config
from autorlhf_nemo.convert.hf_llama import load_hf_checkpoint
from autorlhf_nemo.models.gpt import build_model
from autorlhf_nemo.models.policy import PolicyModel
from autorlhf_nemo.parallel.runtime import initialize, shutdown
from autorlhf_nemo.training.batching import to_device
from autorlhf_nemo.training.engine import build_optimizer, train_step, wrap_for_training
from autorlhf_nemo.training.lm import lm_forward_step, make_lm_batch


def scaled(forward_step, factor):
    """forward_step whose loss is multiplied by ``factor`` (1e30 overflows fp16 gradients)."""

    def step(batch, model):
        output, loss_func = forward_step(batch, model)

        def scaled_loss(out, non_loss_data=False):
            loss, count, reports = loss_func(out)
            return loss * factor, count, reports

        return output, scaled_loss

    return step


def lr_schedule_checks(cfg, hf):
    m = cfg.model
    gpt = build_model(cfg)
    load_hf_checkpoint(gpt, hf, m)
    model = wrap_for_training(gpt, cfg)
    optimizer = build_optimizer(model, cfg)
    scheduler = OptimizerParamScheduler(optimizer, init_lr=0.0, max_lr=1e-3, min_lr=0.0, lr_warmup_steps=10,
                                        lr_decay_steps=100, lr_decay_style="constant", start_wd=0.0,
                                        end_wd=0.0, wd_incr_steps=100, wd_incr_style="constant")
    tokens = torch.randint(0, m.vocab_size, (2, 9), generator=torch.Generator().manual_seed(0))
    batch = make_lm_batch(tokens)
    steps = []
    for factor in (1e30, 1.0):
        result = train_step(model, optimizer, [batch], 1, scaled(lm_forward_step(m.vocab_size), factor), 8, 2,
                            scheduler=scheduler)
        steps.append({"factor": factor, "update_successful": bool(result.update_successful),
                      "scheduler_steps": scheduler.num_steps})
    return steps


def entropy_checks(cfg, hf):
    """Whether the entropy term requires grad, for entropy_coef 0 and 0.01."""
    m = cfg.model
    gpt = build_model(cfg)
    load_hf_checkpoint(gpt, hf, m)
    model = PolicyModel(gpt, value_head_seed=0)
    prompt = torch.tensor([[3, 4, 5]])
    response = torch.tensor([[6, 7]])
    ones = torch.ones_like
    batch = to_device(make_sequence_batch(
        prompt, ones(prompt), response, ones(response), old_logprobs=torch.zeros(1, 2),
        old_values=torch.zeros(1, 2), advantages=torch.ones(1, 2), returns=torch.ones(1, 2)),
        next(gpt.parameters()).device)
    seen = []
    original = ppo_step.entropy

    def recording(logits, vocab_size, temperature=1.0):
        out = original(logits, vocab_size, temperature)
        seen.append(out.requires_grad)
        return out

    ppo_step.entropy = recording
    try:
        result = {}
        for coef in (0.0, 0.01):
            output, loss_func = ppo_step.ppo_forward_step(m.vocab_size, 0.2, 0.2, 1.0, coef)(batch, model)
            loss, _, reports = loss_func(output)
            loss.backward()
            result[coef] = {"entropy_requires_grad": seen[-1], "entropy": float(reports["entropy"][0])}
    finally:
        ppo_step.entropy = original
    return result


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--hf", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    cfg = compose_typed_config(["model.params_dtype=float16", "train.optimizer=adam"])
    initialize(cfg)
    result = {"lr_schedule": lr_schedule_checks(cfg, args.hf),
              "entropy": entropy_checks(compose_typed_config([]), args.hf)}
    torch.save(result, args.out)
    shutdown()


if __name__ == "__main__":
    main()
