"""Online DPO, RLOO and GRPO: pairs, advantages and losses against hand-worked numbers
(single process; the formulas are in each loss module's docstring)."""

from __future__ import annotations

import math

import pytest
import torch

from autorlhf_nemo.algorithms.base import minibatch_assignment
from autorlhf_nemo.algorithms.experience import penalize_missing_eos
from autorlhf_nemo.algorithms.grpo.loss import grpo_advantages, grpo_loss
from autorlhf_nemo.algorithms.online_dpo.loss import dpo_loss, preference_pairs
from autorlhf_nemo.algorithms.rloo.loss import rloo_advantages, rloo_loss
from autorlhf_nemo.generation import GenerationOutput

t = torch.tensor


def test_preference_pairs_pick_best_and_worst_and_flag_ties():
    chosen, rejected, tie = preference_pairs(t([1.0, 2.0, 3.0, 3.0, 0.5, -1.0]), 2)
    assert chosen.tolist() == [1, 2, 4] and rejected.tolist() == [0, 2, 5] and tie.tolist() == [False, True, False]
    chosen, rejected, tie = preference_pairs(t([0.2, 0.9, -0.4, 0.1, 0.1, 0.1]), 3)
    assert chosen.tolist() == [1, 3] and rejected.tolist() == [2, 3] and tie.tolist() == [False, True]


def test_dpo_sigmoid_and_ipo_losses_by_hand():
    # pair 0: margin (-1 + 1.5) - (-3 + 2.5) = 1.0; pair 1: (-2 + 2) - (-1 + 1.5) = -0.5; beta 0.1
    args = (t([-1.0, -2.0]), t([-3.0, -1.0]), t([-1.5, -2.0]), t([-2.5, -1.5]))
    loss, kept, stats = dpo_loss(*args, beta=0.1)
    assert loss.item() == pytest.approx(0.6443966600735709 + 0.7184596480132864)  # -log sigmoid(0.1), (-0.05)
    assert kept.item() == 2
    assert stats["rewards_chosen"][0].item() == pytest.approx(0.1 * 0.5 + 0.1 * 0.0)
    assert stats["rewards_rejected"][0].item() == pytest.approx(0.1 * -0.5 + 0.1 * 0.5)
    assert stats["margin"][0].item() == pytest.approx(0.1 * 1.0 + 0.1 * -0.5)
    assert stats["accuracy"][0].item() == 1.0                       # only pair 0 prefers the chosen side
    loss, _, _ = dpo_loss(*args, beta=0.1, loss_type="ipo")
    assert loss.item() == pytest.approx((1.0 - 5.0) ** 2 + (-0.5 - 5.0) ** 2)  # (margin - 1/(2 beta))^2
    loss, kept, stats = dpo_loss(*args, beta=0.1, weights=t([1.0, 0.0]))  # pair 1 tied: dropped
    assert loss.item() == pytest.approx(0.6443966600735709) and kept.item() == 1
    assert stats["accuracy"][0].item() == 1.0 and stats["accuracy"][1].item() == 1.0
    with pytest.raises(ValueError, match="'hinge'"):
        dpo_loss(*args, beta=0.1, loss_type="hinge")


def test_dpo_gradient_pushes_chosen_up_and_rejected_down():
    chosen = t([-2.0], requires_grad=True)
    rejected = t([-2.0], requires_grad=True)
    loss, _, _ = dpo_loss(chosen, rejected, t([-2.0]), t([-2.0]), beta=0.1)
    loss.backward()
    assert chosen.grad.item() == pytest.approx(-0.05) and rejected.grad.item() == pytest.approx(0.05)  # beta sigma(0)


def test_rloo_leave_one_out_advantages_by_hand():
    # r = score - 0.5 kl = [0.9, 0, 0.45, 0.35]; k = 2: the baseline is the other sample
    advantages, rewards = rloo_advantages(t([1.0, 0.0, 0.5, 0.5]), t([0.2, 0.0, 0.1, 0.3]), 2, 0.5)
    assert rewards.tolist() == pytest.approx([0.9, 0.0, 0.45, 0.35])
    assert advantages.tolist() == pytest.approx([0.9, -0.9, 0.1, -0.1])
    advantages, _ = rloo_advantages(t([1.0, 2.0, 3.0]), t([0.0, 0.0, 0.0]), 3, 0.5)
    assert advantages.tolist() == pytest.approx([1 - 2.5, 2 - 2.0, 3 - 1.5])   # baselines (2+3)/2, (1+3)/2, (1+2)/2


def test_rloo_clipped_sequence_ratio_by_hand():
    loss, n, stats = rloo_loss(t([-1.0, -2.0]), t([-1.1, -1.5]), t([1.0, -1.0]), clip_ratio=0.2)
    # seq 0: rho 1.10517, A 1: max(-1.10517, -1.10517) = -1.10517 (inside the clip range)
    # seq 1: rho 0.60653, A -1: max(0.60653, 0.8) = 0.8 (clipped from below)
    assert loss.item() == pytest.approx(-1.1051709180756477 + 0.8) and n == 2
    assert stats["clipfrac"][0].item() == 1.0                      # seq 1 only
    assert stats["ratio"][0].item() == pytest.approx(1.1051709180756477 + 0.6065306597126334)
    loss, _, _ = rloo_loss(t([-1.0]), t([-1.3]), t([1.0]), clip_ratio=0.2)   # rho 1.3499 > 1.2, A > 0
    assert loss.item() == pytest.approx(-1.2)


def test_grpo_group_advantages_by_hand():
    advantages, zero_std = grpo_advantages(t([1.0, 2.0, 3.0, 3.0, 3.0, 3.0]), 3)
    assert advantages.tolist() == pytest.approx([-1 / 1.0001, 0.0, 1 / 1.0001, 0.0, 0.0, 0.0])  # unbiased std 1
    assert zero_std.tolist() == [False, True]
    advantages, _ = grpo_advantages(t([1.0, 2.0, 4.0, 5.0]), 2, scale_rewards=False)
    assert advantages.tolist() == pytest.approx([-0.5, 0.5, -0.5, 0.5])


def test_grpo_loss_by_hand():
    logprobs, old, ref = t([[-1.0, -2.0]]), t([[-1.2, -2.0]]), t([[-1.0, -1.5]])
    mask, adv = t([[1.0, 1.0]]), t([2.0])
    # token 0: rho = e^0.2 = 1.22140 (within 1 + 0.28), loss -2 rho; kl 0
    # token 1: rho = 1, loss -2; kl = e^0.5 - 0.5 - 1 = 0.14872, times beta 0.1
    loss, count, stats = grpo_loss(logprobs, old, ref, adv, mask, 0.2, 0.28, 0.1, "token")
    assert loss.item() == pytest.approx(-4.4279333892503265) and count.item() == 2
    assert stats["kl"][0].item() == pytest.approx(0.1487212707001282)
    assert stats["clip_high"][0].item() == 0.0
    loss, count, _ = grpo_loss(logprobs, old, ref, adv, mask, 0.2, 0.28, 0.1, "sequence")
    assert loss.item() == pytest.approx(-4.4279333892503265 / 2) and count.item() == 1
    loss, _, stats = grpo_loss(logprobs, old, ref, adv, mask, 0.2, 0.2, 0.1, "token")   # clip-high at 1.2
    assert loss.item() == pytest.approx(-2.4 - 1.9851278729299873) and stats["clip_high"][0].item() == 1.0
    loss, _, stats = grpo_loss(logprobs, old, None, adv, mask, 0.2, 0.2, 0.0, "token")    # beta 0: no reference
    assert loss.item() == pytest.approx(-4.4) and "kl" not in stats


def test_grpo_token_aggregation_weights_long_responses_more():
    # two samples, advantages +1 and -1, ratio 1: per-token losses -1 (3 tokens) and +1 (1 token)
    logprobs = torch.zeros(2, 3)
    mask = t([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    token, tokens, _ = grpo_loss(logprobs, logprobs, None, t([1.0, -1.0]), mask, 0.2, 0.2, 0.0, "token")
    assert token.item() / tokens.item() == pytest.approx((-3 + 1) / 4)
    seq, rows, _ = grpo_loss(logprobs, logprobs, None, t([1.0, -1.0]), mask, 0.2, 0.2, 0.0, "sequence")
    assert seq.item() / rows.item() == pytest.approx(0.0)


def test_missing_eos_penalty_subtract_and_replace():
    mask = t([[1, 1, 0], [1, 1, 1]])
    generation = GenerationOutput(torch.zeros(2, 1), torch.ones(2, 1), torch.zeros(2, 3), mask,
                                  torch.zeros(2, 3), torch.zeros(2, 3), ["eos", "length"])
    scores = t([0.5, 0.5])
    assert penalize_missing_eos(scores, generation, None, "subtract") is scores
    assert penalize_missing_eos(scores, generation, 1.0, "subtract").tolist() == [0.5, -0.5]
    assert penalize_missing_eos(scores, generation, 1.0, "replace").tolist() == [0.5, -1.0]
    dense = t([[0.0, 0.5, 0.0], [0.25, 0.25, 0.25]])
    assert penalize_missing_eos(dense, generation, 1.0, "subtract").tolist() == [[0.0, 0.5, 0.0],
                                                                                 [0.25, 0.25, -0.75]]
    assert penalize_missing_eos(dense, generation, 1.0, "replace").tolist() == [[0.0, 0.5, 0.0], [0.0, 0.0, -1.0]]


def test_minibatches_hold_whole_prompt_groups_at_every_dp_size():
    """Each epoch deals prompts (not rows) to minibatches; a DP rank's contiguous share of the
    prompts holds an equal part of every minibatch."""
    assignment = minibatch_assignment(16, 4, torch.Generator().manual_seed(0))
    assert sorted(assignment.tolist()) == [k for k in range(4) for _ in range(4)]
    for dp in (1, 2, 4):
        for share in assignment.reshape(dp, -1):
            assert sorted(share.tolist()) == [k for k in range(4) for _ in range(4 // dp)]
    rows = assignment.repeat_interleave(3)           # 3 learner rows per prompt stay together
    assert all(len(set(rows[i * 3:(i + 1) * 3].tolist())) == 1 for i in range(16))


def test_grpo_kl_ignores_positions_outside_the_response():
    """Prompt and padding positions carry no reference log-prob (0): a very negative policy log-prob
    there must not overflow exp() into inf * 0 = NaN."""
    logprobs = t([[-100.0, -1.0, -2.0]], requires_grad=True)
    mask = t([[0.0, 1.0, 1.0]])
    loss, _, stats = grpo_loss(logprobs, logprobs.detach(), t([[0.0, -1.0, -1.5]]), t([1.0]), mask,
                               0.2, 0.2, 0.1, "token")
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logprobs.grad).all()
    assert stats["kl"][0].item() == pytest.approx(math.exp(0.5) - 1.5)
