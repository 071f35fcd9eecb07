"""The randomwalks policy learns the graph from the walks (tiny GPT, TP1):
its own sampled walks stay on edges and score like the data (~0.79), not
like an optimal policy (PPO's job) nor like random letters."""

from __future__ import annotations

import torch


def test_pretrained_walker_imitates_the_walks(pretrained_walker):
    r = torch.load(pretrained_walker / "result.pt")
    assert r["losses"][0] > 2.5 and r["losses"][-1] < 0.5          # log(22) = 3.09 at the start
    assert r["sampled_valid"] >= 0.85                                # walks along real edges to the goal
    assert 0.6 <= r["sampled_optimality"] <= 0.9                     # like the data's 0.79
    assert abs(r["data_optimality"] - 0.790) < 0.005
