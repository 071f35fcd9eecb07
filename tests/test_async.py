"""Asynchronous RLHF end to end (rollout.placement=split) on randomwalks, under the
device-discipline check: generator ranks sample, learner ranks learn, weights flow back.

    split synchronous (max_staleness 0)   the same steps as a colocated run, exactly
    split asynchronous (max_staleness 1)  online DPO learns; staleness 0, then 1
    faults                                a killed generator ends the job, naming its rank
    resume after SIGKILL                  exact at staleness 0; at 1 the first batch is fresh
"""

from __future__ import annotations

import datetime
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from autorlhf_nemo.algorithms.experience import importance_weights
from autorlhf_nemo.checkpoint import run_checkpoint
from helpers import WORKERS, children, cli, cli_command, cli_env, kill_after

WALK = ["task=randomwalks", "task.graph_seed=1002", "logging.progress_bar=false", "checkpoint.export_hf=false",
        "algorithm.prompts_per_step=32", "train.micro_batch_size=8", "train.eval_every=0"]
SPLIT = ["rollout.placement=split", "rollout.generator_ranks=1"]
EXCLUDED = ("time/", "generator/", "rollout/staleness", "rollout/behaviour_logprob_gap", "rollout/importance_")


def metrics(run_dir: Path) -> dict[int, dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r for r in rows}


def compared(row: dict) -> dict:
    return {k: v for k, v in row.items() if not k.startswith(EXCLUDED)}


def walker(pretrained_walker) -> list[str]:
    return [*WALK, f"model.hf_checkpoint={pretrained_walker / 'hf'}"]


@pytest.fixture(scope="module")
def ppo_runs(pretrained_walker, tmp_path_factory):
    """PPO for 3 steps, colocated on one rank and split (1 learner + 1 generator) at staleness 0."""
    root = tmp_path_factory.mktemp("async_ppo")
    base = [*walker(pretrained_walker), "algorithm=ppo", "train.total_steps=3"]
    cli(1, [*base, f"run_dir={root / 'colocated'}"], virtual_gpu=True)
    # without the importance weights, whose exp(proximal - behaviour) is 1 only to float precision
    split = cli(2, [*base, *SPLIT, "rollout.importance_correction=false", f"run_dir={root / 'split'}",
                    "checkpoint.save_every=1"], virtual_gpu=True)
    return root, split.stdout


def test_split_synchronous_run_equals_the_colocated_one(ppo_runs):
    """Same prompts, seeds and weights: the generator samples the learner's tokens, so every
    step's rewards, losses and KL are the colocated run's, bit for bit; the generator's
    log-probs of the sampled distribution are the learner's recomputed ones to float precision."""
    root, stdout = ppo_runs
    assert "split: learner ranks 0, generator ranks 1" in stdout and "(virtual GPU" in stdout
    colocated, split = metrics(root / "colocated"), metrics(root / "split")
    assert sorted(colocated) == sorted(split) == [0, 1, 2, 3]
    for step in range(4):
        assert compared(split[step]) == compared(colocated[step]), step
    for step in range(1, 4):
        assert split[step]["rollout/staleness"] == 0
        assert split[step]["rollout/behaviour_logprob_gap"] < 1e-5
        assert split[step]["generator/time_generate"] > 0 and split[step]["time/wait"] >= 0


def test_split_resume_after_sigkill_at_staleness_0_continues_exactly(ppo_runs, pretrained_walker, tmp_path):
    root, _ = ppo_runs
    base = [*walker(pretrained_walker), "algorithm=ppo", "train.total_steps=3", *SPLIT,
            "rollout.importance_correction=false", "checkpoint.save_every=1"]
    run_dir = tmp_path / "killed"
    marker = run_dir / "checkpoints" / "step_000001" / run_checkpoint.MANIFEST
    kill_after(2, [*base, f"run_dir={run_dir}"], marker)
    assert marker.exists() and not (run_dir / "summary.json").exists()
    resumed = cli(2, [*base, f"run_dir={run_dir}"])
    start = int(re.search(r"resumed from step (\d+)", resumed.stdout + resumed.stderr).group(1))
    assert 1 <= start <= 2
    reference, after = metrics(root / "split"), metrics(run_dir)
    for step in range(start + 1, 4):
        assert compared(after[step]) == compared(reference[step]), step
        assert after[step]["rollout/staleness"] == 0


@pytest.fixture(scope="module")
def layout_runs(pretrained_walker, tmp_path_factory):
    """RLOO colocated at DP2, and split with a DP2 learner and two TP1 generator replicas (staleness 0);
    GRPO split with a PP2 learner and one TP2 generator replica (staleness 1)."""
    root = tmp_path_factory.mktemp("async_layouts")
    rloo = [*walker(pretrained_walker), "algorithm=rloo", "train.total_steps=2", "parallel=dp2",
            "parallel.world_size=null"]
    cli(2, [*rloo, f"run_dir={root / 'colocated_dp2'}"], virtual_gpu=True)
    cli(4, [*rloo, "rollout.placement=split", "rollout.generator_ranks=2", "rollout.importance_correction=false",
            f"run_dir={root / 'split_dp2'}"], virtual_gpu=True)
    cli(4, [*walker(pretrained_walker), "algorithm=grpo", "train.total_steps=3", "parallel=pp2",
            "parallel.world_size=null", "rollout.placement=split", "rollout.generator_ranks=2",
            "rollout.generator_tensor_parallel_size=2", "rollout.max_staleness=1", f"run_dir={root / 'split_pp2'}"],
        virtual_gpu=True)
    return root


def test_two_generator_replicas_feed_a_dp2_learner_as_colocated_dp2_ranks(layout_runs):
    """Each replica samples its half of the prompts with the global row seeds; the learner joins
    them and each DP rank takes its own rows: the run equals colocated DP2."""
    colocated, split = metrics(layout_runs / "colocated_dp2"), metrics(layout_runs / "split_dp2")
    for step in range(3):
        assert compared(split[step]) == compared(colocated[step]), step


def test_a_tp2_generator_feeds_a_pp2_learner_and_their_log_probs_agree(layout_runs):
    """Different layouts compute the same distribution to float precision: at staleness 0 (step 1)
    the generator's log-probs match the learner's recomputed ones; later the gap is the policy's step."""
    history = metrics(layout_runs / "split_pp2")
    assert [history[s]["rollout/staleness"] for s in (1, 2, 3)] == [0, 1, 1]
    assert history[1]["rollout/behaviour_logprob_gap"] < 1e-4
    assert history[1]["rollout/importance_weight"] == pytest.approx(1.0, abs=1e-4)
    assert history[1]["rollout/importance_clipped"] == 0.0
    assert history[2]["rollout/behaviour_logprob_gap"] > 10 * history[1]["rollout/behaviour_logprob_gap"]


@pytest.fixture(scope="module")
def weighted_runs(pretrained_walker, tmp_path_factory):
    """Split, staleness 1: PPO with and without importance weights, RLOO with the generator's
    log-probs as the old ones."""
    root = tmp_path_factory.mktemp("async_weighted")
    async_split = [*walker(pretrained_walker), *SPLIT, "rollout.max_staleness=1", "train.total_steps=3"]
    cli(2, [*async_split, "algorithm=ppo", f"run_dir={root / 'ppo'}"])
    cli(2, [*async_split, "algorithm=ppo", "rollout.importance_correction=false", f"run_dir={root / 'ppo_unweighted'}"])
    cli(2, [*async_split, "algorithm=rloo", "rollout.old_logprobs=behaviour", f"run_dir={root / 'rloo'}"])
    return root


def updates(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "updates.jsonl").read_text().splitlines()]


def test_importance_weights_reach_ppos_policy_loss(weighted_runs):
    """Step 1 is fresh (weights 1 to float precision: the generator's log-probs are the learner's
    at TP1), so with and without the weights its policy losses agree; step 2's samples are one
    version old, their weights differ from 1, and so do that step's policy losses."""
    weighted, unweighted = updates(weighted_runs / "ppo"), updates(weighted_runs / "ppo_unweighted")

    def largest_difference(step):
        pairs = [(w["policy_loss"], u["policy_loss"]) for w, u in zip(weighted, unweighted) if w["step"] == step]
        assert len(pairs) == 16
        return max(abs(w - u) / max(abs(u), 1e-3) for w, u in pairs)

    assert largest_difference(1) < 1e-5 and largest_difference(2) > 1e-3
    history = metrics(weighted_runs / "ppo")
    assert history[1]["rollout/importance_weight"] == pytest.approx(1.0, abs=1e-5)
    assert history[1]["rollout/behaviour_logprob_gap"] < 1e-5
    assert abs(history[2]["rollout/importance_weight"] - 1.0) > 1e-4 and history[2]["rollout/behaviour_logprob_gap"] > 1e-3


def test_behaviour_old_log_probs_start_rloos_ratio_at_one(weighted_runs):
    """old_logprobs=behaviour: the ratio's denominator is the generator's log-prob; at staleness 0
    the generator sampled with the learner's weights, so the first update's ratio is 1 to float
    precision; no importance weights are applied."""
    rows = updates(weighted_runs / "rloo")
    assert rows[0]["ratio"] == pytest.approx(1.0, abs=1e-5)
    history = metrics(weighted_runs / "rloo")
    assert "rollout/importance_weight" not in history[1] and history[2]["rollout/staleness"] == 1
    assert history[1]["rollout/behaviour_logprob_gap"] < 1e-5


@pytest.fixture(scope="module")
def dpo_async(pretrained_walker, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("async_dpo")
    cli(2, [*walker(pretrained_walker), "algorithm=online_dpo", "train.total_steps=12", "algorithm.prompts_per_step=64",
            "train.lr=3e-4", *SPLIT, "rollout.max_staleness=1", f"run_dir={run_dir}"], virtual_gpu=True)
    return run_dir


def test_split_asynchronous_online_dpo_learns(dpo_async):
    summary = json.loads((dpo_async / "summary.json").read_text())
    history = metrics(dpo_async)
    assert [history[s]["rollout/staleness"] for s in range(1, 13)] == [0] + [1] * 11
    # Gains over the run's own start (the shipped walker: 0.844 greedy, 0.752 sampled in step 1).
    # Measured with AVX-512 and AVX2 kernels, 1 and 2 threads: greedy 0.844 -> 0.993, sampled
    # 0.752 -> 0.926 over steps 10-12. (A walker pretrained on an Intel VM started at 0.728 and
    # reached 0.929: the same gain, which is what this asserts.)
    # greedy: at least one of the 20 start nodes better (one node lost costs 0.05, as PPO's AVX2 run showed)
    assert summary["before"]["reward"] < 0.9 and summary["after"]["reward"] >= summary["before"]["reward"] + 0.05, summary
    late = [history[s]["rollout/score"] for s in range(10, 13)]
    assert sum(late) / 3 > history[1]["rollout/score"] + 0.1


def test_split_resume_after_sigkill_at_staleness_1_starts_fresh(pretrained_walker, tmp_path):
    """The generators restart from the checkpointed weights: the first batch after the resume
    has staleness 0, the next 1; the run completes."""
    base = [*walker(pretrained_walker), "algorithm=online_dpo", "train.total_steps=8", *SPLIT,
            "rollout.max_staleness=1", "checkpoint.save_every=2"]
    run_dir = tmp_path / "killed"
    marker = run_dir / "checkpoints" / "step_000002" / run_checkpoint.MANIFEST
    kill_after(2, [*base, f"run_dir={run_dir}"], marker)
    assert not (run_dir / "summary.json").exists()
    resumed = cli(2, [*base, f"run_dir={run_dir}"])
    start = int(re.search(r"resumed from step (\d+)", resumed.stdout + resumed.stderr).group(1))
    assert 2 <= start <= 6  # the kill lands after the step-2 checkpoint, possibly after a later one
    history = metrics(run_dir)
    assert [history[s]["rollout/staleness"] for s in range(start + 1, 9)] == [0] + [1] * (7 - start)
    assert (run_dir / "summary.json").is_file()
    again = cli(2, [*base, f"run_dir={run_dir}"])  # a finished run: the generators start and end at once
    assert "resumed from step 8" in again.stdout + again.stderr


def test_importance_weights_are_truncated_ratios():
    """min(pi_proximal / pi_behaviour, c) per token (1 where masked) or per sequence."""
    proximal = torch.tensor([[-1.0, -2.0, 0.0], [-0.5, -0.5, -0.5]])
    behaviour = torch.tensor([[-1.5, -1.0, 0.0], [-0.5, -3.0, -0.5]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    weights, clipped = importance_weights(proximal, behaviour, mask, 2.0, per_sequence=False)
    expected = torch.tensor([[math.exp(0.5), math.exp(-1.0), 1.0], [1.0, 2.0, 1.0]])
    assert torch.allclose(weights, expected) and clipped.tolist() == [[0, 0, 0], [0, 1, 0]]
    weights, clipped = importance_weights(proximal, behaviour, mask, 2.0, per_sequence=True)
    assert torch.allclose(weights, torch.tensor([math.exp(-0.5), 2.0])) and clipped.tolist() == [0, 1]


def _rank_pid(launcher_pid: int, rank: int) -> int | None:
    """The pid of the torchrun worker with RANK=``rank`` under ``launcher_pid``."""
    return next((pid for pid, environ in children(launcher_pid).items()
                 if f"RANK={rank}".encode() in environ.split(b"\0")), None)


def test_a_killed_generator_ends_the_job_naming_its_rank(pretrained_walker, tmp_path):
    """SIGKILL the generator mid-run: the job exits non-zero within 60 s and says which rank died."""
    run_dir = tmp_path / "run"
    overrides = [*walker(pretrained_walker), "algorithm=online_dpo", "train.total_steps=200", *SPLIT,
                 "rollout.max_staleness=1", f"run_dir={run_dir}"]
    proc = subprocess.Popen(cli_command(2, overrides), env=cli_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.time() + 300
        while not (run_dir / "metrics.jsonl").exists() or len(metrics(run_dir)) < 3:
            assert proc.poll() is None and time.time() < deadline, "the run ended before its third step"
            time.sleep(0.2)
        generator = _rank_pid(proc.pid, 1)
        assert generator is not None
        os.kill(generator, signal.SIGKILL)
        killed = time.time()
        output, _ = proc.communicate(timeout=120)
        elapsed = time.time() - killed
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode != 0
    assert elapsed < 60, elapsed
    assert "rank      : 1" in output or "rank: 1" in output, output[-3000:]
    assert "Signal 9 (SIGKILL)" in output, output[-3000:]


def test_a_learner_that_raises_ends_the_job_with_its_error(tmp_path):
    """The learner's reward function raises (SmolLM2, a custom task): the generator, waiting for the
    learner, is stopped too; the job exits non-zero within 60 s of the error, naming rank 0 and the error."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(WORKERS / "api_run.py"), "--mode", "raises", "--split", "--run-dir", str(tmp_path / "run")]
    proc = subprocess.Popen(cmd, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=600)
        ended = time.time()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode != 0
    assert "KeyError: 'no score for colours'" in output, output[-3000:]
    root_cause = output.split("Root Cause")[1]
    assert re.search(r"rank\s*: 0 \(local_rank: 0\)\s*\n\s*exitcode\s*: 1", root_cause), output[-3000:]
    failed = datetime.datetime.strptime(re.search(r"time\s*: (\S+)", root_cause).group(1), "%Y-%m-%d_%H:%M:%S")
    assert ended - failed.timestamp() < 60  # torchrun's time of the learner's exit -> the job's end


def test_hydra_submitit_local_launcher_runs_a_split_job(pretrained_walker, tmp_path):
    """hydra/launcher=local: two submitit tasks (no torchrun) form the world; rank 1 generates."""
    proc = subprocess.run([sys.executable, "-m", "autorlhf_nemo", "-m", "hydra/launcher=local", "cluster.gpus_per_node=2",
                           *walker(pretrained_walker), "algorithm=online_dpo", "train.total_steps=3", *SPLIT,
                           "rollout.max_staleness=1", f"run_dir={tmp_path / 'run'}", f"hydra.sweep.dir={tmp_path}"],
                          env=cli_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    history = metrics(tmp_path / "run")
    assert [history[s]["rollout/staleness"] for s in (1, 2, 3)] == [0, 1, 1]
    assert (tmp_path / "run" / "summary.json").is_file()
