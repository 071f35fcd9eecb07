"""SFT and offline DPO end to end on SmolLM2-135M-Instruct: the command line on a chat dataset
(packed), the Python API on a ``datasets.Dataset`` of preference pairs, and a DPO run resumed
with its precomputed reference read back. Each checks the run directory (summary.json,
metrics.jsonl, the plot, hf_export) and that the held-out loss fell from the run's own start."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from helpers import cli, cli_env

TITLES = ["The Silent Harbor", "Red Canyon", "Paper Moons", "Glass Rivers", "The Long Night", "Northern Lights",
          "Iron Bloom", "Low Tide", "Winter Song", "Copper Sky", "Amber Fields", "Velvet Storm", "Quiet Giants",
          "Salt and Stone", "Echo Park", "Hollow Crown"]
FAST = ["logging.progress_bar=false", "logging.tensorboard=false", "train.lr=1e-4", "algorithm.num_layers_unfrozen=4"]


def chat_rows() -> list[dict]:
    rows = []
    for i, title in enumerate(TITLES):
        messages = [{"role": "user", "content": f"Review {title} in one sentence."},
                    {"role": "assistant", "content": f"{title} is a wonderful film; I loved every minute."}]
        if i % 3 == 0:  # a second exchange: both assistant turns are trained
            messages += [{"role": "user", "content": "And the music?"},
                         {"role": "assistant", "content": "The music is wonderful too."}]
        rows.append({"messages": messages})
    return rows


def read_metrics(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_sft_cli_on_a_packed_chat_dataset(tmp_path):
    data = tmp_path / "chat.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in chat_rows()))
    run_dir = tmp_path / "run"
    proc = cli(1, ["algorithm=sft", f"data.path={data}", "data.eval_fraction=0.25", "data.pack=true",
                   "data.max_length=128", "train.total_steps=3", "train.global_batch_size=2",
                   "train.micro_batch_size=1", "logging.num_samples=2", f"run_dir={run_dir}", *FAST])
    out = proc.stdout
    assert f"dataset {data} (chat): train 12 rows (none dropped); eval 4 rows (none dropped); packed into" in out
    summary = json.loads((run_dir / "summary.json").read_text())
    before, after = summary["before"]["heldout"], summary["after"]["heldout"]
    assert after["loss"] < before["loss"] - 0.1, (before, after)
    assert after["perplexity"] < before["perplexity"]
    assert summary["dataset"]["type"] == "chat" and summary["dataset"]["counts"]["train"]["kept"] == 12
    assert "held-out loss: " in out and "held-out perplexity: " in out
    assert out.count("[after +0.00]") == 2   # decoded held-out prompts, shown (no reward_fn)
    rows = read_metrics(run_dir)
    assert [r["step"] for r in rows] == [0, 1, 2, 3] and "eval/loss" in rows[0] and "learn/epoch" in rows[1]
    assert (run_dir / "loss.png").exists()
    assert (run_dir / "hf_export" / "model.safetensors").exists()
    assert (run_dir / "hf_export" / "tokenizer_config.json").exists()


PAIRS_SCRIPT = textwrap.dedent("""
    import json, sys
    import datasets
    import autorlhf_nemo

    titles = json.loads(sys.argv[2])
    rows = {"prompt": [f"Review {t} in one sentence." for t in titles],
            "chosen": [f" {t} is a wonderful film." for t in titles],
            "rejected": [f" {t} is a dreadful film." for t in titles]}
    summary = autorlhf_nemo.train(["algorithm=dpo", "data.eval_fraction=0.25",
                                   "train.global_batch_size=4", "train.micro_batch_size=4", "algorithm.beta=0.5",
                                   "algorithm.eval_generation=false", f"run_dir={sys.argv[1]}", *sys.argv[3:]],
                                  dataset=datasets.Dataset.from_dict(rows))
    print("HELDOUT", json.dumps([summary["before"]["heldout"], summary["after"]["heldout"]]))
""")


def test_dpo_python_api_on_a_dataset_then_resume_reads_the_reference_back(tmp_path):
    run_dir = tmp_path / "dpo"
    cmd = [sys.executable, "-c", PAIRS_SCRIPT, str(run_dir), json.dumps(TITLES), *FAST, "train.total_steps=3"]
    proc = subprocess.run(cmd, env=cli_env(), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert f"reference log-probs of 16 pairs computed and saved to {run_dir / 'reference_logps.pt'}" in proc.stdout
    before, after = json.loads(proc.stdout.split("HELDOUT ", 1)[1].splitlines()[0])
    assert before["loss"] == pytest.approx(0.693147, abs=1e-4) and before["margin"] == pytest.approx(0, abs=1e-4)
    assert after["loss"] < before["loss"] and after["margin"] > 0 and after["accuracy"] > 0.5, after
    assert (run_dir / "hf_export" / "model.safetensors").exists()
    rows = read_metrics(run_dir)
    assert rows[1]["learn/loss"] == pytest.approx(0.693147, abs=1e-4)   # the first update starts at the reference

    # a longer run in the same directory: resumes at step 3, the reference read back, not recomputed
    cmd = [sys.executable, "-c", PAIRS_SCRIPT, str(run_dir), json.dumps(TITLES), *FAST, "train.total_steps=4"]
    proc = subprocess.run(cmd, env=cli_env(), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert "reference log-probs of 16 pairs read from" in proc.stdout and "resumed from step 3" in proc.stdout
    assert [r["step"] for r in read_metrics(run_dir)] == [0, 1, 2, 3, 4]
