"""Write tests/fixtures/trl_losses.json: TRL's own loss code run on fixed tensors.

The test suite checks this project's GRPO, RLOO, online DPO and offline DPO losses (values and gradients
with respect to the per-token log-probs) against what TRL computes from the same inputs,
without TRL as a test dependency: this script runs once, in an environment with TRL
(`bash bench/trl_env.sh` makes .venv-trl), and its output is committed.

    .venv-trl/bin/python bench/trl_fixtures.py            # -> tests/fixtures/trl_losses.json

TRL's code is called, not re-typed: ``GRPOTrainer._compute_loss`` and
``RLOOTrainer._compute_loss`` on a trainer object that holds just the attributes those
methods read (the model forward replaced by the fixed log-probs), and
``OnlineDPOTrainer.training_step`` with generation, the forwards and the reward
functions replaced by the fixed tensors (its loss, metrics and backward are TRL's).
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace

import torch

B, T, EOS = 6, 5, 2
OUT = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "trl_losses.json"


def fixed_inputs() -> dict:
    """B sequences of up to T response tokens (different lengths), per-token log-probs of the
    current, sampling and reference policies, per-sequence advantages and rewards."""
    g = torch.Generator().manual_seed(0)
    lengths = torch.tensor([5, 3, 4, 5, 2, 4])
    mask = (torch.arange(T)[None] < lengths[:, None]).float()
    logps = -(0.2 + 2.8 * torch.rand(B, T, generator=g))
    return {"mask": mask,
            "logps": logps * mask,
            "old_logps": (logps + 0.15 * torch.randn(B, T, generator=g)) * mask,
            "ref_logps": (logps + 0.3 * torch.randn(B, T, generator=g)) * mask,
            "advantages": torch.randn(B, generator=g),
            # per completion; rows 0..2 are the first completions of 3 prompts, rows 3..5 the second
            "rewards": torch.tensor([0.5, -0.2, 0.9, 0.1, 0.4, 0.3]),
            # which completions ended with EOS (for the missing-EOS penalty)
            "has_eos": torch.tensor([True, True, False, True, False, True])}


def _accelerator():
    from accelerate import Accelerator

    return Accelerator(cpu=True)


def _token_inputs(x: dict) -> dict:
    completion_ids = torch.full((B, T), 7)
    completion_ids[x["has_eos"], 0] = EOS  # EOS somewhere in the completions that have one
    return {"prompt_ids": torch.ones(B, 2, dtype=torch.long), "prompt_mask": torch.ones(B, 2, dtype=torch.long),
            "completion_ids": completion_ids, "completion_mask": x["mask"].long()}


def grpo(x: dict, loss_type: str, beta: float, epsilon_low: float, epsilon_high: float) -> dict:
    from trl.trainer.grpo_trainer import GRPOTrainer

    trainer = object.__new__(GRPOTrainer)
    logps = x["logps"].clone().requires_grad_()
    vars(trainer).update(
        top_entropy_quantile=1.0, loss_type=loss_type, off_policy_mask_threshold=None,
        importance_sampling_level="token", beta=beta, epsilon_low=epsilon_low, epsilon_high=epsilon_high,
        args=SimpleNamespace(use_bias_correction_kl=False, delta=None, steps_per_generation=1),
        use_vllm=False, vllm_importance_sampling_correction=False, model=SimpleNamespace(training=True),
        current_gradient_accumulation_steps=1, accelerator=_accelerator(), aux_loss_enabled=False,
        _entropy_bonus_enabled=False, max_completion_length=T,
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
        _get_per_token_logps_and_entropies=lambda *args, **kwargs: (logps, torch.zeros(B, T), None))
    inputs = {**_token_inputs(x), "advantages": x["advantages"], "old_per_token_logps": x["old_logps"],
              "ref_per_token_logps": x["ref_logps"], "num_items_in_batch": x["mask"].sum()}
    loss = trainer._compute_loss(None, inputs)
    loss.backward()
    return {"loss": loss.item(), "grad": logps.grad.tolist(),
            "metrics": {k: v[-1] for k, v in trainer._metrics["train"].items()}}


def rloo(x: dict, epsilon: float) -> dict:
    from trl.trainer.rloo_trainer import RLOOTrainer

    trainer = object.__new__(RLOOTrainer)
    logps = x["logps"].clone().requires_grad_()
    vars(trainer).update(
        epsilon_low=epsilon, epsilon_high=epsilon, model=SimpleNamespace(training=True), aux_loss_enabled=False,
        accelerator=_accelerator(), _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
        _get_per_token_logps_and_entropies=lambda *args, **kwargs: (logps, torch.zeros(B, T), None))
    inputs = {**_token_inputs(x), "advantages": x["advantages"], "old_logps": (x["old_logps"] * x["mask"]).sum(1)}
    loss = trainer._compute_loss(None, inputs)
    loss.backward()
    return {"loss": loss.item(), "grad": logps.grad.tolist(),
            "metrics": {k: v[-1] for k, v in trainer._metrics["train"].items()}}


def online_dpo(x: dict, loss_type: str, beta: float, missing_eos_penalty: float | None) -> dict:
    from trl.experimental.online_dpo import OnlineDPOTrainer

    trainer = object.__new__(OnlineDPOTrainer)
    policy = x["logps"].clone().requires_grad_()
    model, reference = torch.nn.Module(), object()
    tokens = _token_inputs(x)
    vars(trainer).update(
        args=SimpleNamespace(use_vllm=False, missing_eos_penalty=missing_eos_penalty, loss_type=loss_type,
                             torch_empty_cache_steps=None, optim="adamw_torch", n_gpu=1,
                             gradient_accumulation_steps=1),
        _beta=beta, eos_token_ids=[EOS], reward_funcs=[None], ref_model=reference, accelerator=_accelerator(),
        stats=defaultdict(list), state=SimpleNamespace(global_step=0, epoch=0),
        processing_class=SimpleNamespace(batch_decode=lambda ids, **kwargs: [""] * len(ids)),
        _generate=lambda model, prompts, images=None: (tokens["prompt_ids"], tokens["prompt_mask"],
                                                        tokens["completion_ids"], tokens["completion_mask"], None),
        _forward=lambda m, *args: policy if m is model else x["ref_logps"],
        _calculate_rewards_from_functions=lambda **kwargs: x["rewards"].clone())
    loss = trainer.training_step(model, {"prompt": ["p"] * (B // 2)})
    return {"loss": loss.item(), "grad": policy.grad.tolist(), "metrics": {k: v[-1] for k, v in trainer.stats.items()}}


def dpo(x: dict, loss_type: str, beta: float) -> dict:
    """Offline DPO: TRL's ``DPOTrainer._compute_loss`` with the model forward replaced by the fixed
    per-token log-probs (rows 0..2 chosen, 3..5 their rejected: TRL's [chosen, rejected] halves),
    the reference's sums precomputed (its ``precompute_ref_logps`` path)."""
    from trl.trainer.dpo_trainer import DPOTrainer

    trainer = object.__new__(DPOTrainer)
    per_token = x["logps"].clone().requires_grad_()
    zeros = torch.zeros(B, T)
    outputs = SimpleNamespace(log_probs=per_token, entropy=zeros, mean_logits=zeros, is_top1=zeros.bool())
    vars(trainer).update(
        model=SimpleNamespace(training=True), accelerator=_accelerator(), aux_loss_enabled=False, ld_alpha=None,
        precompute_ref_logps=True, f_divergence_type="reverse_kl", loss_types=[loss_type], loss_weights=[1.0],
        beta=beta, label_smoothing=0.0, use_weighting=False, _total_train_tokens=0, _tp_size=1,
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)})
    completion_mask = torch.cat([torch.zeros(B, 1), x["mask"]], 1).long()   # one prompt token, then T
    ref = (x["ref_logps"] * x["mask"]).sum(1)
    inputs = {"input_ids": torch.full((B, T + 1), 7), "attention_mask": torch.ones(B, T + 1, dtype=torch.long),
              "completion_mask": completion_mask, "ref_chosen_logps": ref[:B // 2], "ref_rejected_logps": ref[B // 2:]}
    loss = trainer._compute_loss(lambda **kwargs: outputs, inputs, return_outputs=False)
    loss.backward()
    return {"loss": loss.item(), "grad": per_token.grad.tolist(),
            "metrics": {k: v[-1] for k, v in trainer._metrics["train"].items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    import transformers
    import trl

    x = fixed_inputs()
    cases = {
        "grpo_token": {"config": {"loss_aggregation": "token", "beta": 0.04, "clip_low": 0.2, "clip_high": 0.28},
                       "trl": grpo(x, "dapo", 0.04, 0.2, 0.28)},
        "grpo_sequence": {"config": {"loss_aggregation": "sequence", "beta": 0.04, "clip_low": 0.2, "clip_high": 0.2},
                          "trl": grpo(x, "grpo", 0.04, 0.2, 0.2)},
        "grpo_token_no_kl": {"config": {"loss_aggregation": "token", "beta": 0.0, "clip_low": 0.1, "clip_high": 0.1},
                             "trl": grpo(x, "dapo", 0.0, 0.1, 0.1)},
        "rloo": {"config": {"clip_ratio": 0.2}, "trl": rloo(x, 0.2)},
        "online_dpo_sigmoid": {"config": {"loss_type": "sigmoid", "beta": 0.1, "missing_eos_penalty": None},
                               "trl": online_dpo(x, "sigmoid", 0.1, None)},
        "online_dpo_ipo": {"config": {"loss_type": "ipo", "beta": 0.5, "missing_eos_penalty": None},
                           "trl": online_dpo(x, "ipo", 0.5, None)},
        "online_dpo_eos_penalty": {"config": {"loss_type": "sigmoid", "beta": 0.1, "missing_eos_penalty": 1.0},
                                   "trl": online_dpo(x, "sigmoid", 0.1, 1.0)},
        "dpo_sigmoid": {"config": {"loss_type": "sigmoid", "beta": 0.1}, "trl": dpo(x, "sigmoid", 0.1)},
        "dpo_ipo": {"config": {"loss_type": "ipo", "beta": 0.5}, "trl": dpo(x, "ipo", 0.5)},
    }
    fixture = {"versions": {"trl": trl.__version__, "transformers": transformers.__version__,
                            "torch": torch.__version__},
               "inputs": {k: v.tolist() for k, v in x.items()}, "cases": cases}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(fixture, indent=1) + "\n")
    losses = ", ".join(f"{name} loss {case['trl']['loss']:.6f}" for name, case in cases.items())
    print(f"wrote {args.out}: {losses}")


if __name__ == "__main__":
    main()
