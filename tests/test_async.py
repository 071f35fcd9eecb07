"""Asynchronous RLHF end to end (rollout.placement=split) on randomwalks, under the
device-discipline check: generator ranks sample, learner ranks learn, weights flow back.

    split synchronous (max_staleness 0)   the same steps as a colocated run, exactly
    split asynchronous (max_staleness 1)  online DPO learns; staleness 0, then 1
    faults                                a killed generator ends the job, naming its rank
    resume after SIGKILL                  exact at staleness 0; at 1 the first batch is fresh
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from autorlhf_nemo.checkpoint import run_checkpoint
from helpers import cli, cli_command, cli_env, kill_after

WALK = ["task=randomwalks", "task.graph_seed=1002", "logging.progress_bar=false", "checkpoint.export_hf=false",
        "algorithm.prompts_per_step=32", "train.eval_every=0"]
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
    split = cli(2, [*base, *SPLIT, f"run_dir={root / 'split'}", "checkpoint.save_every=1"], virtual_gpu=True)
    return root, split.stdout


def test_split_synchronous_run_equals_the_colocated_one(ppo_runs):
    """Same prompts, seeds and weights: the generator samples the learner's tokens, so every
    step's rewards, losses and KL are the colocated run's, bit for bit; the generator's
    log-probs of the sampled distribution are the learner's recomputed ones (gap 0, weights 1)."""
    root, stdout = ppo_runs
    assert "split: learner ranks 0, generator ranks 1" in stdout and "(virtual GPU" in stdout
    colocated, split = metrics(root / "colocated"), metrics(root / "split")
    assert sorted(colocated) == sorted(split) == [0, 1, 2, 3]
    for step in range(4):
        assert compared(split[step]) == compared(colocated[step]), step
    for step in range(1, 4):
        assert split[step]["rollout/staleness"] == 0
        assert split[step]["rollout/behaviour_logprob_gap"] < 1e-5
        assert split[step]["rollout/importance_weight"] == pytest.approx(1.0, abs=1e-5)
        assert split[step]["generator/time_generate"] > 0 and split[step]["time/wait"] >= 0


def test_split_resume_after_sigkill_at_staleness_0_continues_exactly(ppo_runs, pretrained_walker, tmp_path):
    root, _ = ppo_runs
    base = [*walker(pretrained_walker), "algorithm=ppo", "train.total_steps=3", *SPLIT, "checkpoint.save_every=1"]
    run_dir = tmp_path / "killed"
    marker = run_dir / "checkpoints" / "step_000001" / run_checkpoint.MANIFEST
    kill_after(2, [*base, f"run_dir={run_dir}"], marker)
    assert marker.exists() and not (run_dir / "summary.json").exists()
    resumed = cli(2, [*base, f"run_dir={run_dir}"])
    assert "resumed from step" in resumed.stdout + resumed.stderr
    reference, after = metrics(root / "split"), metrics(run_dir)
    for step in (2, 3):
        assert compared(after[step]) == compared(reference[step]), step
        assert after[step]["rollout/staleness"] == 0


@pytest.fixture(scope="module")
def dpo_async(pretrained_walker, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("async_dpo")
    cli(2, [*walker(pretrained_walker), "algorithm=online_dpo", "train.total_steps=8", *SPLIT,
            "rollout.max_staleness=1", f"run_dir={run_dir}"], virtual_gpu=True)
    return run_dir


def test_split_asynchronous_online_dpo_learns(dpo_async):
    summary = json.loads((dpo_async / "summary.json").read_text())
    history = metrics(dpo_async)
    assert [history[s]["rollout/staleness"] for s in range(1, 9)] == [0] + [1] * 7
    assert summary["after"]["reward"] >= summary["before"]["reward"] + 0.15, summary
    late = [history[s]["rollout/score"] for s in range(6, 9)]
    assert sum(late) / 3 > history[1]["rollout/score"] + 0.05


def test_split_resume_after_sigkill_at_staleness_1_starts_fresh(pretrained_walker, tmp_path):
    """The generators restart from the checkpointed weights: the first batch after the resume
    has staleness 0, the next 1; the run completes."""
    base = [*walker(pretrained_walker), "algorithm=online_dpo", "train.total_steps=5", *SPLIT,
            "rollout.max_staleness=1", "checkpoint.save_every=2"]
    run_dir = tmp_path / "killed"
    marker = run_dir / "checkpoints" / "step_000002" / run_checkpoint.MANIFEST
    kill_after(2, [*base, f"run_dir={run_dir}"], marker)
    resumed = cli(2, [*base, f"run_dir={run_dir}"])
    assert "resumed from step 2" in resumed.stdout + resumed.stderr
    history = metrics(run_dir)
    assert [history[s]["rollout/staleness"] for s in (3, 4, 5)] == [0, 1, 1]
    assert (run_dir / "summary.json").is_file()


def _rank_pid(launcher_pid: int, rank: int) -> int | None:
    """The pid of the torchrun worker with RANK=``rank`` under ``launcher_pid``."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        if parent == launcher_pid and f"RANK={rank}".encode() in environ:
            return int(entry.name)
    return None


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
