"""Run-checkpoint bookkeeping: only complete checkpoints are resumed from; a
save cut short (a .partial folder, a missing manifest) or a checkpoint whose
files were truncated afterwards is reported and the previous one is used; a
save that fails on any rank raises on every rank and keeps the previous
checkpoint. (Saves with SIGKILL and PP2 are in test_ppo_runs.py.)"""

from __future__ import annotations

import json

from helpers import torchrun

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


def test_failed_save_raises_on_every_rank_and_keeps_the_previous_checkpoint(tmp_path):
    """Real write failures on a tiny Llama at TP2 (tests/workers/checkpoint_failures.py): rank 1's
    shard files over its file-size limit, then rank 0 unable to write at all (megatron-core 0.16:
    common.pt, a step Megatron runs on rank 0 only; 0.19 saves common data through DCP, so its
    first failed write is a shard file's), then Megatron's last step (metadata.json) failing on rank 0. A hang
    would end in torchrun's timeout."""
    root = tmp_path / "checkpoints"
    torchrun("checkpoint_failures.py", 2, ["--root", str(root), "--out", str(tmp_path)], timeout=300)
    reports = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    step1 = str(root / "step_000001")
    for report in reports:
        # the failed rank's error as raised: torch.save's zip writer raises RuntimeError (0.16's
        # common.pt, every version's shards); 0.19's DCP writes its common data with open(): OSError
        for key, step, failed_rank, types in (("rank1_file_too_large", 2, 1, ("RuntimeError",)),
                                              ("rank0_cannot_write", 3, 0, ("RuntimeError", "OSError"))):
            failure = report[key]
            assert failure["type"] == "CheckpointSaveError", failure
            message = failure["message"]
            assert any(message.startswith(f"saving the step-{step} checkpoint into {root}/step_00000{step} "
                                          f"failed: rank {failed_rank}: {kind}: ") for kind in types), message
            assert f"rank {1 - failed_rank}:" not in message
            assert f"The unfinished {root}/step_00000{step}.partial was removed" in message
            assert f"the newest complete checkpoint, {step1}, is intact" in message
            assert failure["previous"] == step1 and failure["partial_left"] == "None"
        assert report["entries"] == ["step_000001"]              # no .partial left, step 1 untouched
        assert report["latest"] == step1
        assert report["loads_step1_weights"] is True             # the weights were changed after step 1
        metadata = report["metadata_json"]
        assert metadata["type"] == "CheckpointWriteError"
        assert metadata["message"].endswith("failed: rank 0: IsADirectoryError: [Errno 21] Is a directory: "
                                            f"'{tmp_path}/metadata_json_is_a_directory/metadata.json'")
        assert report["step4"] == str(root / "step_000004")      # the ranks are still in step
        assert report["entries_after_step4"] == ["step_000001", "step_000004"]
    assert reports[0] == reports[1]                              # every rank saw the same
