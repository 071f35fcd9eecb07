"""The randomwalks policy learns the graph from the walks (tiny GPT, TP1):
its own sampled walks stay on edges and score like the data (~0.79), not
like an optimal policy (PPO's job) nor like random letters. The default
randomwalks job also pretrains at DP2, and its start-up prints none of the
expected CPU-machine noise (absent GPU libraries, dependency chatter)."""

from __future__ import annotations

import json
import subprocess
import warnings

import pytest
import torch
from helpers import cli_command, cli_env, torchrun


@pytest.fixture(scope="module")
def pretraining(tmp_path_factory):
    """300 pretraining steps at TP1 from scratch, as the shipped walker (tests/fixtures) was made:
    the figures of the walker's own sampled and greedy walks."""
    out = tmp_path_factory.mktemp("walker") / "result.pt"
    torchrun("randomwalks_pretrain_checks.py", 1, ["--out", str(out), "--steps", "300", "train.lr=3e-3",
                                                   "train.micro_batch_size=100", "train.global_batch_size=100"])
    return torch.load(out)


def test_pretrained_walker_imitates_the_walks(pretraining):
    """Bands wide enough for any x86-64 CPU: the loss, validity and optimality figures moved by at
    most 0.03 between AVX-512 and AVX2 kernels (measured: last loss 0.283 / 0.315, valid 0.935 /
    0.955, sampled optimality 0.748 / 0.749); the greedy walker moved more (0.844 / 0.769), which is
    why the RL tests start from the shipped walker instead."""
    r = pretraining
    assert r["losses"][0] > 2.5 and r["losses"][-1] < 0.5          # log(22) = 3.09 at the start
    assert r["sampled_valid"] >= 0.85                                # walks along real edges to the goal
    assert 0.6 <= r["sampled_optimality"] <= 0.9                     # like the data's 0.79
    assert abs(r["data_optimality"] - 0.790) < 0.005


@pytest.mark.parametrize("dp, expected", [(1, 32), (2, 48), (3, 32), (4, 24)])
def test_pretraining_micro_batches(dp, expected):
    """96 walks per step with train.micro_batch_size=32: each rank's share in micro-batches of 32
    where 32 divides it (DP1: 3 of 32, as before), else one micro-batch per rank."""
    from autorlhf_nemo.data.randomwalks_pretrain import pretrain_micro_batch_size

    assert pretrain_micro_batch_size(96, dp, 32) == expected
    with pytest.raises(ValueError, match="pretrain_batch_size=96 is not divisible by the data-parallel size 5"):
        pretrain_micro_batch_size(96, 5, 32)


# Start-up messages that are expected on a CPU machine and silenced (autorlhf_nemo/__init__.py).
SILENCED = [
    "Apex is not installed",
    "Transformer Engine and Apex are not installed",
    "full scope is deprecated",
    "No exporters were provided",
    "Final configuration contains 0 exporter(s)",
    "OneLogger: Setting error_handling_strategy",
    "GPTModel IS DEPRECATED",  # megatron-core 0.19
]


@pytest.fixture(scope="module")
def dp2_run(tmp_path_factory):
    """``torchrun --nproc_per_node 2 -m autorlhf_nemo algorithm=ppo task=randomwalks parallel=dp2``,
    cut short (5 pretraining steps, one PPO step; 2 minibatches: 128 rollouts = 32 x DP2 x 2), with
    Python's default warning filters (the helpers' PYTHONWARNINGS=ignore would hide the noise)."""
    run_dir = tmp_path_factory.mktemp("dp2") / "run"
    env = cli_env()
    del env["PYTHONWARNINGS"]
    proc = subprocess.run(cli_command(2, [
        "algorithm=ppo", "task=randomwalks", "parallel=dp2", "algorithm.minibatches=2", "train.total_steps=1",
        "task.pretrain_steps=5", "checkpoint.resume=false", "logging.progress_bar=false",
        "logging.tensorboard=false", f"run_dir={run_dir}"]), env=env, capture_output=True, text=True, timeout=900)
    return proc, run_dir


def test_randomwalks_pretrains_and_runs_at_dp2(dp2_run):
    proc, run_dir = dp2_run
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "rollout/score" in r] == [1]
    assert "== ppo on randomwalks: 1 steps" in proc.stdout


def test_startup_prints_no_expected_noise(dp2_run):
    proc, _ = dp2_run
    output = proc.stdout + proc.stderr
    assert "== ppo on randomwalks" in output
    for message in SILENCED:
        assert message not in output, f"{message!r} printed:\n{output[-6000:]}"


def test_only_the_expected_warnings_are_silenced():
    from autorlhf_nemo import silence_expected_noise

    with warnings.catch_warnings(record=True) as caught:
        warnings.resetwarnings()               # start from no filters (pytest.ini adds its own)
        silence_expected_noise()
        for message, module in [("Apex is not installed. Falling back to Torch Norm", "megatron.core.models.backends"),
                                ("Transformer Engine and Apex are not installed. Falling back to Torch optimizers.",
                                 "megatron.core.optimizer"),
                                ("Apex is not installed. Falling back to Torch Norm", "mypackage.norms"),
                                ("something unexpected", "megatron.core.models.backends")]:
            warnings.warn_explicit(message, UserWarning, "x.py", 1, module=module)
    assert [(str(w.message), w.filename) for w in caught] == [
        ("Apex is not installed. Falling back to Torch Norm", "x.py"), ("something unexpected", "x.py")]
