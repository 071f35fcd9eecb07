"""Training-step details: the LR schedule follows applied updates only, and the PPO
entropy is computed for logging without autograd unless it is in the loss."""

from __future__ import annotations

import pytest
import torch

from helpers import torchrun
from tiny_model import make_tiny_llama


@pytest.fixture(scope="module")
def checks(tmp_path_factory):
    root = tmp_path_factory.mktemp("training")
    make_tiny_llama(root / "hf", seed=5)
    torchrun("training_checks.py", 1, ["--hf", str(root / "hf"), "--out", str(root / "out.pt")], virtual_gpu=True)
    return torch.load(root / "out.pt", weights_only=False)


def test_skipped_fp16_update_does_not_advance_the_lr_schedule(checks):
    overflow, normal = checks["lr_schedule"]
    assert overflow["factor"] == 1e30 and not overflow["update_successful"]
    assert overflow["scheduler_steps"] == 0                  # the warm-up did not move
    assert normal["update_successful"] and normal["scheduler_steps"] == 1


def test_entropy_enters_autograd_only_when_in_the_loss(checks):
    assert checks["entropy"][0.0]["entropy_requires_grad"] is False
    assert checks["entropy"][0.01]["entropy_requires_grad"] is True
    # Still reported, and the same value either way.
    assert checks["entropy"][0.0]["entropy"] == pytest.approx(checks["entropy"][0.01]["entropy"])
    assert checks["entropy"][0.0]["entropy"] > 0
