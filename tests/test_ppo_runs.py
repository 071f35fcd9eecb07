"""PPO end to end through the command line on trlX's randomwalks benchmark:
learning, exact resume after SIGKILL, checkpoints at PP2, layout invariance.

    python -m autorlhf_nemo algorithm=ppo task=randomwalks ...

Every run pretrains the walker (or loads the pretrained one), trains with the
generation engine, reward function, frozen reference, GAE and Megatron
optimizer steps, evaluates greedy optimality over all start nodes, saves
checkpoints and exports the final policy.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from autorlhf_nemo.checkpoint import run_checkpoint
from helpers import cli, kill_after

# The figures asserted here are of the seed-1002 graph (the shipped pretrained walker's too).
RANDOMWALKS = ["algorithm=ppo", "task=randomwalks", "task.graph_seed=1002", "logging.progress_bar=false"]
COMPARED = ("rollout/", "learn/", "kl_coef")


def start_from(pretrained_walker: Path) -> list[str]:
    """Start from the shipped walker (tests/fixtures): the same weights on every CPU."""
    return [f"model.hf_checkpoint={pretrained_walker / 'hf'}"]


def metrics(run_dir: Path) -> dict[int, dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: {k: v for k, v in r.items() if k.startswith(COMPARED)} for r in rows}


@pytest.fixture(scope="module")
def learning_run(pretrained_walker, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("rw_tp1")
    proc = cli(1, [*RANDOMWALKS, *start_from(pretrained_walker), f"run_dir={run_dir}", "checkpoint.save_every=5"])  # 30 steps
    return run_dir, proc.stdout


def test_ppo_reaches_shortest_paths_on_randomwalks(learning_run):
    run_dir, stdout = learning_run
    summary = json.loads((run_dir / "summary.json").read_text())
    history = metrics(run_dir)
    # The shipped walker samples like its data (0.740 optimality in step 1); greedy it is a bit
    # better (0.844 over the 20 start nodes). Asserted: gains over that start. Measured with AVX-512
    # and AVX2 kernels at 1 and 2 threads: greedy 0.844 -> 0.993 (0.943 with AVX2 at 2 threads:
    # one start node of 20 off its shortest path), sampled 0.740 -> 0.948-0.949 over steps 26-30.
    assert 0.65 <= history[1]["rollout/score"] <= 0.85
    assert summary["before"]["reward"] < 0.9
    assert summary["after"]["reward"] >= summary["before"]["reward"] + 0.05   # greedy, all start nodes
    assert history[1]["rollout/kl"] == 0.0               # policy == reference before the first update
    assert history[1]["learn/policy_ratio"] == pytest.approx(1.0, abs=0.05)
    late = [history[s]["rollout/score"] for s in range(26, 31)]
    assert sum(late) / 5 > history[1]["rollout/score"] + 0.15
    assert "eval reward after" in stdout and "[after" in stdout
    for name in ("metrics.jsonl", "reward_and_kl.png", "hf_export/config.json", "hf_export/model.safetensors"):
        assert (run_dir / name).is_file(), name
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    steps = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert steps == ["step_000025", "step_000030"]        # keep_last=2


def test_sigkill_then_resume_continues_exactly(learning_run, pretrained_walker, tmp_path):
    """Kill -9 right after the step-3 checkpoint; the resumed run's steps 4-6
    equal the uninterrupted run's (same seed, same constant learning rate)."""
    reference = metrics(learning_run[0])
    run_dir = tmp_path / "killed"
    args = [*RANDOMWALKS, *start_from(pretrained_walker), f"run_dir={run_dir}", "train.total_steps=8",
            "checkpoint.save_every=3"]
    marker = run_dir / "checkpoints" / "step_000003" / run_checkpoint.MANIFEST
    kill_after(1, args, marker)
    assert marker.exists() and not (run_dir / "summary.json").exists()   # killed mid-run
    resumed = cli(1, args)
    assert "resumed from step 3" in resumed.stdout + resumed.stderr
    after = metrics(run_dir)
    for step in (3, 4, 5, 6):
        assert after[step] == reference[step], step
    # metrics.jsonl cut back to the checkpoint (its row restored from the checkpoint if the
    # kill came before it was written), then continued
    assert sorted(after) == list(range(9))


def test_pipeline_parallel_run_saves_resumes_and_learns(pretrained_walker, tmp_path):
    run_dir = tmp_path / "pp2"
    common = [*RANDOMWALKS, *start_from(pretrained_walker), "parallel=pp2", f"run_dir={run_dir}",
              "checkpoint.save_every=15"]
    cli(2, [*common, "train.total_steps=15"])
    proc = cli(2, [*common, "train.total_steps=30"])
    assert "resumed from step 15" in proc.stdout + proc.stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    # from the shipped walker's 0.844: 0.993 with AVX-512 and AVX2 kernels, at 1 and 2 threads
    assert summary["before"]["reward"] < 0.9 and summary["after"]["reward"] >= summary["before"]["reward"] + 0.05


FROZEN = ["algorithm.num_layers_unfrozen=2"]  # top 2 of 4 layers train; the reference shares the rest
LAYOUTS = {"tp1": (1, []), "tp2": (2, ["parallel=tp2"]), "pp2": (2, ["parallel=pp2"]),
           "dp2": (2, ["parallel=dp2"]), "tp2_sp": (2, ["parallel=tp2_sp"]),
           "tp1_frozen_cached": (1, FROZEN), "tp1_frozen_full": (1, [*FROZEN, "algorithm.cache_frozen_trunk=false"]),
           # Megatron's recomputed forward runs the cached trunk's top layers too
           "tp2_sp_frozen_cached_recompute": (2, ["parallel=tp2_sp", *FROZEN, "train.recompute=full"])}


@pytest.fixture(scope="module")
def invariance_runs(pretrained_walker, tmp_path_factory):
    """First 2 PPO steps from the same pretrained walker at every layout, with the randomwalks
    defaults (128 prompts x 1 sample, 4 epochs x 4 minibatches; micro-batches of 16 so that DP2 divides
    them), under the device-discipline check
    (AUTORLHF_VIRTUAL_GPU: a host tensor meeting a device tensor, or handed to NCCL, raises)."""
    runs = {}
    for name, (nproc, layout) in LAYOUTS.items():
        run_dir = tmp_path_factory.mktemp(f"inv_{name}")
        proc = cli(nproc, [*RANDOMWALKS, *layout, f"run_dir={run_dir}",
                           *start_from(pretrained_walker), "train.total_steps=2",
                           "train.micro_batch_size=16", "checkpoint.export_hf=false", "logging.tensorboard=false"],
                   virtual_gpu=True)
        assert "(virtual GPU: device-discipline check)" in proc.stdout, name
        runs[name] = metrics(run_dir)
    return runs


@pytest.mark.parametrize("base,layout", [("tp1", "tp2"), ("tp1", "pp2"), ("tp1", "dp2"), ("tp1", "tp2_sp"),
                                         ("tp1_frozen_full", "tp1_frozen_cached"),
                                         ("tp1_frozen_full", "tp2_sp_frozen_cached_recompute")])
def test_first_ppo_steps_are_layout_invariant(invariance_runs, base, layout):
    """Same losses at every layout; and with a frozen trunk, the same with its
    output cached once per rollout (hydra forward) as with full forwards."""
    base, other = invariance_runs[base], invariance_runs[layout]
    assert base[1]["rollout/kl"] == 0.0 and other[1]["rollout/kl"] == 0.0
    for step in (1, 2):   # step 2 samples from and learns on the policy after 16 optimizer steps
        assert other[step]["rollout/score"] == pytest.approx(base[step]["rollout/score"], abs=1e-6)  # same samples
        assert other[step]["rollout/kl"] == pytest.approx(base[step]["rollout/kl"], abs=1e-4)
        for key in ("learn/loss", "learn/policy_loss", "learn/value_loss"):
            a, b = base[step][key], other[step][key]
            assert abs(a - b) <= 1e-4 * abs(a), (layout, step, key, a, b)


def test_data_parallel_size_does_not_change_learning(invariance_runs):
    """Minibatches are global: with 4 epochs x 4 minibatches, DP2 trains on the same rows in
    every optimizer step as DP1, so every rollout and learning metric agrees (rel 1e-3)."""
    base, other = invariance_runs["tp1"], invariance_runs["dp2"]
    for step in (1, 2):
        assert set(other[step]) == set(base[step])
        for key, value in base[step].items():
            assert other[step][key] == pytest.approx(value, rel=1e-3, abs=1e-7), (step, key)
