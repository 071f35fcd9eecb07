"""PPO rollout statistics and learning steps through Megatron's schedules: KL
to the reference is exactly 0 and the first step's ratio exactly 1, and three
steps give the same losses at every layout (tiny Llama with a value head, gloo)."""

from __future__ import annotations

import pytest
import torch

from helpers import torchrun
from tiny_model import make_tiny_llama

LAYOUTS = {"tp1": (1, "parallel=single"), "tp2": (2, "parallel=tp2"), "pp2": (2, "parallel=pp2"),
           "dp2": (2, "parallel=dp2"), "tp2_sp": (2, "parallel=tp2_sp")}
COMMON = ["train.optimizer=adam", "train.lr=1e-3", "train.micro_batch_size=2", "train.global_batch_size=8"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("ppo")
    make_tiny_llama(root / "hf", std=0.1, seed=3)
    results = {}
    for name, (nproc, layout) in LAYOUTS.items():
        out = root / f"{name}.pt"
        torchrun("ppo_checks.py", nproc, ["--hf", str(root / "hf"), "--out", str(out), layout, *COMMON])
        results[name] = torch.load(out, weights_only=False)
    return results


def test_first_step_has_unit_ratio_and_zero_kl(runs):
    for name, result in runs.items():
        first = result["steps"][0]
        assert result["kl_abs_max"] == 0.0 and result["rollout"]["kl"] == 0.0, name
        assert abs(result["rollout"]["score"]) < 1e-7, name  # scores -1..1 evenly spaced
        assert first["policy_ratio"] == 1.0 and first["policy_approx_kl"] == 0.0, name
        assert first["policy_clipfrac"] == 0.0, name
        # Whitened advantages have mean 0 over the batch's tokens: policy loss = -mean(A) = 0.
        assert abs(first["policy_loss"]) < 1e-6, name


def test_ppo_steps_learn(runs):
    steps = runs["tp1"]["steps"]
    assert steps[2]["value_loss"] < steps[0]["value_loss"]
    assert steps[1]["policy_ratio"] != 1.0  # the policy moved


@pytest.mark.parametrize("layout", ["tp2", "pp2", "dp2", "tp2_sp"])
def test_ppo_losses_are_layout_invariant(runs, layout):
    assert runs[layout]["rollout"] == pytest.approx(runs["tp1"]["rollout"], rel=1e-6, abs=1e-7)
    for ref, got in zip(runs["tp1"]["steps"], runs[layout]["steps"]):
        for key in ("loss", "policy_loss", "value_loss", "entropy", "policy_ratio", "grad_norm"):
            assert got[key] == pytest.approx(ref[key], rel=1e-4, abs=1e-6), (layout, key)
