"""GRPO, RLOO and online DPO losses against TRL's own code on identical tensors: the values
and the gradients with respect to the per-token log-probs, from tests/fixtures/trl_losses.json
(written by bench/trl_fixtures.py with TRL 1.16, which stays out of the test dependencies).

Layouts differ: TRL's online DPO puts the first completion of every prompt before all the
second ones and keeps tied pairs; this project keeps a prompt's samples next to each other
and drops ties (the fixture has none). TRL's loss is a mean; ours is (sum, count), which
Megatron divides."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from autorlhf_nemo.algorithms.experience import penalize_missing_eos
from autorlhf_nemo.algorithms.grpo.loss import grpo_loss
from autorlhf_nemo.algorithms.online_dpo.loss import dpo_loss, preference_pairs
from autorlhf_nemo.algorithms.rloo.loss import rloo_loss
from autorlhf_nemo.algorithms.step import sequence_sums
from autorlhf_nemo.generation import GenerationOutput

FIXTURE = json.loads((Path(__file__).parent / "fixtures" / "trl_losses.json").read_text())
X = {k: torch.tensor(v) for k, v in FIXTURE["inputs"].items()}


def _check(case: str, loss: torch.Tensor, logps: torch.Tensor) -> None:
    expected = FIXTURE["cases"][case]["trl"]
    loss.backward()
    assert loss.item() == pytest.approx(expected["loss"], abs=1e-6), case
    assert torch.allclose(logps.grad, torch.tensor(expected["grad"]), atol=1e-7), case


def test_fixture_is_trls():
    assert FIXTURE["versions"]["trl"] == "1.16.0"


@pytest.mark.parametrize("case", ["grpo_token", "grpo_sequence", "grpo_token_no_kl"])
def test_grpo_loss_equals_trls(case):
    c = FIXTURE["cases"][case]["config"]
    logps = X["logps"].clone().requires_grad_()
    ref = X["ref_logps"] if c["beta"] else None
    loss, count, stats = grpo_loss(logps, X["old_logps"], ref, X["advantages"], X["mask"], c["clip_low"],
                                   c["clip_high"], c["beta"], c["loss_aggregation"])
    _check(case, loss / count, logps)
    metrics = FIXTURE["cases"][case]["trl"]["metrics"]
    for ours, theirs in (("clip_low", "clip_ratio/low_mean"), ("clip_high", "clip_ratio/high_mean"), ("kl", "kl")):
        if theirs in metrics:
            total, tokens = stats[ours]
            assert (total / tokens).item() == pytest.approx(metrics[theirs], abs=1e-6), (case, ours)
    assert ("kl" in stats) == bool(c["beta"])


def test_rloo_loss_equals_trls():
    c = FIXTURE["cases"]["rloo"]["config"]
    logps = X["logps"].clone().requires_grad_()
    loss, n, stats = rloo_loss(sequence_sums(logps, X["mask"]), sequence_sums(X["old_logps"], X["mask"]),
                               X["advantages"], c["clip_ratio"])
    _check("rloo", loss / n, logps)


@pytest.mark.parametrize("case", ["online_dpo_sigmoid", "online_dpo_ipo", "online_dpo_eos_penalty"])
def test_online_dpo_loss_equals_trls(case):
    c = FIXTURE["cases"][case]["config"]
    prompts = X["rewards"].shape[0] // 2
    order = torch.stack([torch.arange(prompts), torch.arange(prompts) + prompts], dim=1).flatten()  # ours: per prompt
    logps = X["logps"].clone().requires_grad_()
    mask = X["mask"][order]
    generation = GenerationOutput(torch.zeros(2 * prompts, 1), torch.ones(2 * prompts, 1), torch.zeros_like(mask),
                                  mask, torch.zeros_like(mask), torch.zeros_like(mask),
                                  ["eos" if e else "length" for e in X["has_eos"][order].tolist()])
    scores = penalize_missing_eos(X["rewards"][order], generation, c["missing_eos_penalty"], "subtract")
    chosen, rejected, tie = preference_pairs(scores, 2)
    assert not tie.any()
    policy = sequence_sums(logps[order], mask)
    ref = sequence_sums(X["ref_logps"][order], mask)
    loss, kept, stats = dpo_loss(policy[chosen], policy[rejected], ref[chosen], ref[rejected], c["beta"],
                                 c["loss_type"])
    _check(case, loss / kept, logps)
    metrics = FIXTURE["cases"][case]["trl"]["metrics"]
    for ours, theirs in (("rewards_chosen", "rewards/chosen"), ("rewards_rejected", "rewards/rejected"),
                         ("margin", "rewards/margins"), ("accuracy", "rewards/accuracies")):
        total, count = stats[ours]
        assert (total / count).item() == pytest.approx(metrics[theirs], abs=1e-6), (case, ours)


@pytest.mark.parametrize("case", ["dpo_sigmoid", "dpo_ipo"])
def test_offline_dpo_loss_equals_trls(case):
    """TRL's DPOTrainer on the fixed log-probs (rows 0..2 chosen, 3..5 rejected; the reference's sums
    precomputed): loss, gradient w.r.t. the per-token log-probs and the reported rewards, margins,
    accuracies and log-probs (IPO on per-token means, its reports on sums, as TRL's)."""
    from autorlhf_nemo.algorithms.dpo.model import dpo_pair_loss

    c = FIXTURE["cases"][case]["config"]
    pairs = X["mask"].shape[0] // 2
    order = torch.stack([torch.arange(pairs), torch.arange(pairs) + pairs], dim=1).flatten()  # ours: c0, r0, c1, ...
    logps = X["logps"].clone().requires_grad_()
    batch = {"response_mask": X["mask"][order], "ref_logps": sequence_sums(X["ref_logps"], X["mask"])[order]}
    loss, count, stats = dpo_pair_loss(logps[order], batch, c["beta"], c["loss_type"], 0.0, 0.0,
                                       average=c["loss_type"] == "ipo")
    (loss / count).backward()
    expected = FIXTURE["cases"][case]["trl"]
    assert (loss / count).item() == pytest.approx(expected["loss"], abs=1e-6)
    # TRL sums its model's log-probs over every position (0 where labels are -100, so no gradient reaches
    # the model there); the fixed tensor's padding positions get its gradient, ours are masked out
    assert torch.allclose(logps.grad, torch.tensor(expected["grad"]) * X["mask"], atol=1e-7)
    metrics = FIXTURE["cases"][case]["trl"]["metrics"]
    for ours, theirs in (("rewards_chosen", "rewards/chosen"), ("rewards_rejected", "rewards/rejected"),
                         ("margin", "rewards/margins"), ("accuracy", "rewards/accuracies"),
                         ("logps_chosen", "logps/chosen"), ("logps_rejected", "logps/rejected")):
        total, n = stats[ours]
        assert (total / n).item() == pytest.approx(metrics[theirs], abs=1e-5), (case, ours)


def test_missing_eos_penalty_changes_the_preferences_as_in_trl():
    """The penalty flips two of the three pairs (the same in TRL's case: its loss differs from the
    unpenalised one)."""
    cases = FIXTURE["cases"]
    assert cases["online_dpo_eos_penalty"]["trl"]["loss"] != pytest.approx(cases["online_dpo_sigmoid"]["trl"]["loss"])
