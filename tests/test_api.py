"""The Python API: autorlhf_nemo.train(...) with a user's reward function and
prompts on SmolLM2-135M-Instruct (task=custom), and the clear errors a broken
reward function produces through it."""

from __future__ import annotations

import json
import subprocess
import sys

from helpers import WORKERS, cli_env


def api_run(mode: str, run_dir) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(WORKERS / "api_run.py"), "--mode", mode, "--run-dir", str(run_dir)],
                          env=cli_env(), capture_output=True, text=True, timeout=900)


def test_train_with_custom_reward_and_prompts(tmp_path):
    proc = api_run("ok", tmp_path / "run")
    assert proc.returncode == 0, proc.stderr[-4000:]
    summary = json.loads(proc.stdout.split("SUMMARY ", 1)[1].splitlines()[0])
    assert summary["steps"] == [0, 1, 2]
    assert 0.0 < summary["before"] < 1.0          # length / 100 of a 6-token reply
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert rows[1]["rollout/kl"] == 0.0 and abs(rows[1]["learn/policy_ratio"] - 1.0) < 1e-6
    assert (tmp_path / "run" / "checkpoints" / "step_000002" / "COMPLETE").is_file()
    # LR schedule (Megatron's scheduler): one warm-up step from 0, then 1e-5 (cosine over the 2 steps).
    assert rows[1]["learn/lr"] == 0.0 and rows[2]["learn/lr"] == 1e-5
    assert rows[2]["rollout/kl"] == 0.0   # a step at lr 0 leaves the policy where it was


def test_reward_function_exception_names_the_sample(tmp_path):
    proc = api_run("raises", tmp_path / "run")
    assert proc.returncode != 0
    assert "reward_fn raised KeyError: 'no score for colours' on sample" in proc.stderr
    assert "Name a colour." in proc.stderr


def test_reward_function_wrong_count_is_reported(tmp_path):
    proc = api_run("wrong_count", tmp_path / "run")
    assert proc.returncode != 0
    assert "reward_fn returned 1 scores for 2 samples" in proc.stderr   # the first evaluation: 2 prompts
