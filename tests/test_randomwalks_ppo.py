"""PPO end to end on trlX's randomwalks: pretrain the walker on the walks,
then PPO against the optimality reward (generation engine, reward function,
reference model, GAE, Megatron optimizer steps). The pretrained walker scores
like its data (~0.75); after 20 PPO steps it walks shortest paths."""

from __future__ import annotations

import pytest
import torch

from helpers import torchrun


@pytest.mark.parametrize("nproc,layout", [(1, "parallel=single"), (2, "parallel=pp2")])
def test_ppo_learns_shortest_paths(tmp_path, nproc, layout):
    out = tmp_path / "ppo.pt"
    torchrun("randomwalks_ppo_checks.py", nproc, ["--out", str(out), "--ppo-steps", "20", layout])
    r = torch.load(out, weights_only=False)
    assert 0.65 <= r["before"]["sampled"] <= 0.85        # the pretrained walker imitates the data (0.79)
    assert r["after"]["greedy"] >= 0.95 and r["after"]["sampled"] >= 0.95
    scores = [h["rollout/score"] for h in r["history"]]
    assert sum(scores[-5:]) / 5 > sum(scores[:3]) / 3 + 0.1
    assert r["history"][0]["rollout/kl"] == 0.0           # policy == reference before the first update
