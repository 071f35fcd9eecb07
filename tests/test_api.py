"""The Python API: autorlhf_nemo.train(...) with a user's reward function and
prompts on SmolLM2-135M-Instruct (task=custom), the README's example run as a
user's script, and the clear errors a broken reward function produces through it."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

from helpers import WORKERS, cli_env

README = Path(__file__).resolve().parents[1] / "README.md"


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


def readme_api_example() -> str:
    """The ```python block of README.md's "Running a job" section."""
    section = README.read_text().split("\n## Running a job\n", 1)[1].split("\n## ", 1)[0]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


def with_overrides(script: str, overrides: list[str]) -> str:
    """``script`` with ``overrides`` in the list it passes to ``autorlhf_nemo.train``, replacing
    the entries for the same keys."""
    call = next(node for node in ast.walk(ast.parse(script))
                if isinstance(node, ast.Call) and ast.unparse(node.func) == "autorlhf_nemo.train")
    listed = call.args[0]
    keys = {o.split("=", 1)[0] for o in overrides}
    kept = [e.value for e in listed.elts if e.value.split("=", 1)[0] not in keys]
    return script.replace(ast.get_source_segment(script, listed), repr(kept + overrides), 1)


def test_readme_api_example_runs_as_an_unguarded_script(tmp_path):
    """Users save the example as a script without an ``if __name__ == "__main__":`` guard: saving
    must not start processes that re-import it (Megatron's writer spawns a Manager and forks)."""
    script = with_overrides(readme_api_example(), [
        f"run_dir={tmp_path / 'run'}", "train.total_steps=1", "train.micro_batch_size=2",
        "algorithm.prompts_per_step=2", "algorithm.epochs=1", "algorithm.num_layers_unfrozen=2",
        "task.sampling.max_new_tokens=4", "logging.progress_bar=false", "logging.tensorboard=false"])
    assert "__main__" not in script and "reward_fn=reward_fn" in script and "train.total_steps=1" in script
    (tmp_path / "example.py").write_text(script)
    proc = subprocess.run([sys.executable, "example.py"], cwd=tmp_path, env=cli_env(), capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    run = tmp_path / "run"
    assert (run / "checkpoints" / "step_000001" / "COMPLETE").is_file()
    assert (run / "hf_export" / "config.json").is_file() and (run / "hf_export" / "model.safetensors").is_file()
    summary = json.loads((run / "summary.json").read_text())
    # The example's last line prints the reward before and after.
    assert proc.stdout.splitlines()[-1] == f"{summary['before']['reward']} {summary['after']['reward']}"
