"""Run-checkpoint bookkeeping: only complete checkpoints are resumed from; a
save cut short (a .partial folder, a missing manifest) or a checkpoint whose
files were truncated afterwards is reported and the previous one is used.
(The saves themselves, with SIGKILL and PP2, are in test_ppo_runs.py.)"""

from __future__ import annotations

import json

from autorlhf_nemo.checkpoint import run_checkpoint


def fake_checkpoint(root, step, complete=True):
    folder = run_checkpoint.step_dir(root, step)
    (folder / "dist").mkdir(parents=True)
    (folder / "dist" / "__0_0.distcp").write_bytes(b"x" * 100)
    (folder / "state.pt").write_bytes(b"y" * 10)
    if complete:
        (folder / run_checkpoint.MANIFEST).write_text(json.dumps(run_checkpoint._manifest(folder)))
    return folder


def test_newest_complete_checkpoint_is_chosen(tmp_path):
    fake_checkpoint(tmp_path, 2)
    newest = fake_checkpoint(tmp_path, 4)
    (tmp_path / "step_000006.partial").mkdir()          # a save killed midway
    assert run_checkpoint.latest_complete(tmp_path) == newest


def test_truncated_checkpoint_is_detected_and_the_previous_used(tmp_path):
    previous = fake_checkpoint(tmp_path, 2)
    newest = fake_checkpoint(tmp_path, 4)
    shard = newest / "dist" / "__0_0.distcp"
    shard.write_bytes(shard.read_bytes()[:37])          # cut mid-file
    messages = []
    assert run_checkpoint.latest_complete(tmp_path, log=messages.append) == previous
    assert "step_000004 is incomplete: dist/__0_0.distcp has 37 bytes, the manifest says 100 (truncated)" \
        in messages[0]


def test_missing_file_or_manifest_is_detected(tmp_path):
    folder = fake_checkpoint(tmp_path, 3)
    (folder / "state.pt").unlink()
    assert run_checkpoint.verify(folder) == "state.pt is missing"
    unfinished = fake_checkpoint(tmp_path, 5, complete=False)
    assert "no COMPLETE manifest" in run_checkpoint.verify(unfinished)
    assert run_checkpoint.latest_complete(tmp_path, log=lambda m: None) is None


def test_prune_keeps_the_last_n_complete(tmp_path):
    for step in (1, 2, 3, 4):
        fake_checkpoint(tmp_path, step)
    run_checkpoint._prune(tmp_path, keep_last=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_000003", "step_000004"]


def test_resumed_metrics_file_is_cut_back_and_the_checkpointed_row_restored(tmp_path):
    from autorlhf_nemo.training.run_logger import RunLogger

    rows = [{"step": s, "rollout/score": s / 10} for s in range(5)]   # steps 0-4 logged, then killed
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:3]))
    # The step-3 checkpoint was saved but the kill came before its row was written.
    logger = RunLogger(tmp_path, 6, enabled=True, progress_bar=False, tensorboard=False, start_step=3,
                       restored_row={"rollout/score": 0.3})
    logger.log(4, {"rollout/score": 0.4})
    logger.close()
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [0, 1, 2, 3, 4] and lines[3]["rollout/score"] == 0.3
    # A fresh run (start_step 0) starts an empty file.
    RunLogger(tmp_path, 6, enabled=True, progress_bar=False, tensorboard=False).close()
    assert (tmp_path / "metrics.jsonl").read_text() == ""
