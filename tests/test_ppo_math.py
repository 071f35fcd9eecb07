"""PPO building blocks against hand-worked numbers (single process)."""

from __future__ import annotations

import math

import pytest
import torch

from autorlhf_nemo.algorithms.ppo.kl import AdaptiveKLController, FixedKLController, make_kl_controller
from autorlhf_nemo.algorithms.ppo.losses import policy_loss, value_loss
from autorlhf_nemo.algorithms.ppo.shaping import RunningMoments, clip_scores, kl_penalized_rewards, place_scores
from autorlhf_nemo.ops.advantages import gae
from autorlhf_nemo.ops.masked import masked_mean, masked_mean_var, masked_whiten


def test_gae_by_hand():
    # Row 0: 3 tokens; row 1: 2 tokens then padding (its padded reward/value must not leak in).
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.5, -1.0, 9.0]])
    values = torch.tensor([[0.2, 0.4, 0.6], [0.1, 0.3, 9.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    gamma, lam = 0.9, 0.8
    adv, ret = gae(rewards, values, mask, gamma, lam)
    # Row 0: deltas d2 = 1 - .6 = .4; d1 = 0 + .9*.6 - .4 = .14; d0 = 0 + .9*.4 - .2 = .16
    # A2 = .4; A1 = .14 + .72*.4 = .428; A0 = .16 + .72*.428 = .46816
    # Row 1: d1 = -1 - .3 = -1.3; d0 = .5 + .9*.3 - .1 = .67; A1 = -1.3; A0 = .67 + .72*(-1.3) = -.266
    expected = torch.tensor([[0.46816, 0.428, 0.4], [-0.266, -1.3, 0.0]])
    torch.testing.assert_close(adv, expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(ret, expected + values * mask, rtol=0, atol=1e-6)


def test_gae_lambda_one_gamma_one_is_reward_to_go_minus_value():
    rewards, values = torch.randn(4, 6), torch.randn(4, 6)
    mask = torch.ones(4, 6)
    adv, ret = gae(rewards, values, mask, 1.0, 1.0)
    to_go = rewards.flip(-1).cumsum(-1).flip(-1)
    torch.testing.assert_close(ret, to_go, rtol=0, atol=1e-5)
    torch.testing.assert_close(adv, to_go - values, rtol=0, atol=1e-5)


def test_gae_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="same \\[batch, response\\] shape"):
        gae(torch.zeros(2, 3), torch.zeros(2, 4), torch.ones(2, 3), 1.0, 1.0)


def test_masked_statistics_by_hand():
    x = torch.tensor([[1.0, 2.0, 100.0], [3.0, 6.0, -50.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 0]])
    # valid: 1 2 3 6 -> mean 3, unbiased var ((4 + 1 + 0 + 9) / 3) = 14/3
    mean, var = masked_mean_var(x, mask)
    assert mean.item() == pytest.approx(3.0) and var.item() == pytest.approx(14 / 3)
    white = masked_whiten(x, mask)
    expected = (torch.tensor([[1.0, 2.0, 0.0], [3.0, 6.0, 0.0]]) - 3.0) / math.sqrt(14 / 3 + 1e-8)
    torch.testing.assert_close(white, expected * mask, rtol=0, atol=1e-6)
    kept = masked_whiten(x, mask, shift_mean=False)
    torch.testing.assert_close(kept, (expected + 3.0) * mask, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="selects no element"):
        masked_mean(x, torch.zeros_like(mask))


def test_policy_loss_by_hand():
    old = torch.log(torch.tensor([[0.5, 0.5, 0.5]]))
    new = torch.log(torch.tensor([[0.75, 0.25, 0.55]]))  # ratios 1.5, 0.5, 1.1
    adv = torch.tensor([[1.0, 1.0, -2.0]])
    mask = torch.tensor([[1, 1, 1]])
    loss, stats = policy_loss(new, old, adv, mask, clip_ratio=0.2)
    # token 0: max(-1.5, -1.2) = -1.2 (clipped); token 1: max(-0.5, -0.8) = -0.5;
    # token 2: max(2.2, 2.2) = 2.2 -> sum 0.5
    assert loss.item() == pytest.approx(0.5, abs=1e-6)
    assert stats["clipfrac"].item() == 1.0
    assert stats["ratio"].item() == pytest.approx(3.1, abs=1e-6)
    k3 = sum((r - 1) - math.log(r) for r in (1.5, 0.5, 1.1))
    assert stats["approx_kl"].item() == pytest.approx(k3, abs=1e-6)


def test_first_step_policy_ratio_is_one_and_loss_is_minus_advantage():
    logp = torch.randn(3, 5)
    adv = torch.randn(3, 5)
    mask = torch.ones(3, 5)
    mask[1, 3:] = 0
    loss, stats = policy_loss(logp, logp.clone(), adv, mask, clip_ratio=0.2)
    assert loss.item() == pytest.approx(-(adv * mask).sum().item(), abs=1e-5)
    assert stats["approx_kl"].item() == 0.0 and stats["clipfrac"].item() == 0.0
    assert stats["ratio"].item() == mask.sum().item()


def test_value_loss_by_hand():
    values = torch.tensor([[1.0, 0.0, 5.0]])
    old = torch.tensor([[0.0, 0.0, 0.0]])
    returns = torch.tensor([[2.0, 1.0, 0.0]])
    mask = torch.tensor([[1, 1, 0]])
    loss, stats = value_loss(values, old, returns, mask, clip_value=0.5)
    # token 0: unclipped (1-2)^2 = 1, clipped (0.5-2)^2 = 2.25 -> 2.25; token 1: 1 and 1 -> 1
    assert loss.item() == pytest.approx(0.5 * (2.25 + 1.0))
    assert stats["clipfrac"].item() == 1.0 and stats["error"].item() == pytest.approx(2.0)


def test_fixed_and_adaptive_kl_controllers_by_hand():
    fixed = FixedKLController(0.05)
    fixed.update(kl=10.0, n_steps=64)
    assert fixed.value == 0.05
    adaptive = AdaptiveKLController(0.1, target=6.0, horizon=10000)
    adaptive.update(kl=9.0, n_steps=256)     # error clip(0.5) = 0.2 -> x (1 + 0.2*256/10000)
    assert adaptive.value == pytest.approx(0.1 * 1.00512)
    adaptive.update(kl=5.4, n_steps=1000)    # error -0.1 -> x (1 - 0.01)
    assert adaptive.value == pytest.approx(0.1 * 1.00512 * 0.99)
    restored = AdaptiveKLController(0.5, target=6.0, horizon=10000)
    restored.load_state_dict(adaptive.state_dict())
    assert restored.value == adaptive.value
    assert type(make_kl_controller(0.1, None, 10000)) is FixedKLController
    assert type(make_kl_controller(0.1, 6.0, 10000)) is AdaptiveKLController
    with pytest.raises(ValueError, match="target > 0"):
        AdaptiveKLController(0.1, target=0.0, horizon=10)


def test_kl_penalized_rewards_place_score_on_last_token():
    logp = torch.tensor([[-1.0, -2.0, -3.0], [-1.0, -1.0, -1.0]])
    ref = torch.tensor([[-1.5, -2.0, -2.0], [-1.0, -3.0, -9.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    rewards, kl = kl_penalized_rewards(torch.tensor([2.0, -1.0]), logp, ref, mask, kl_coef=0.1)
    torch.testing.assert_close(kl, torch.tensor([[0.5, 0.0, -1.0], [0.0, 2.0, 0.0]]))
    torch.testing.assert_close(rewards, torch.tensor([[-0.05, 0.0, 2.1], [0.0, -1.2, 0.0]]))
    dense = place_scores(torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]), mask)
    torch.testing.assert_close(dense, torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 0.0]]))
    torch.testing.assert_close(clip_scores(torch.tensor([-5.0, 0.5, 5.0]), 1.0), torch.tensor([-1.0, 0.5, 1.0]))


def test_running_moments_merge_batches_exactly():
    data = torch.randn(100) * 3 + 2
    moments = RunningMoments()
    for chunk in data.split([10, 37, 53]):
        moments.update(chunk)
    assert moments.count == 100
    assert moments.mean == pytest.approx(data.double().mean().item(), abs=1e-9)
    assert moments.std == pytest.approx(data.double().std(unbiased=False).item(), abs=1e-9)
