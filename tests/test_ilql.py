"""ILQL (algorithm=ilql): the loss by hand and against a plain-torch full-vocabulary version at
every layout, layout-invariant updates, the Polyak target sync in optimizer steps, Q-guided
greedy decoding identical at TP1 / TP2 / PP2 / TP2 x PP2, the CLI run (beta sweep, export of
the heads, the inference entry point), SIGKILL then resume, and bad configurations.

A tiny walker (4 layers, hidden 64) is trained by the CLI on trlX's randomwalks data (fixture);
its export gives every layout the same initial trunk (tests/workers/ilql_checks.py).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch

from autorlhf_nemo.checkpoint import run_checkpoint
from autorlhf_nemo.config.compose import compose_config
from autorlhf_nemo.config.validate import ConfigError, validate_config
from helpers import WORKERS, cli, cli_command, cli_env, kill_after, torchrun

TINY = ["algorithm=ilql", "task=randomwalks", "model.num_layers=4", "model.hidden_size=64",
        "model.ffn_hidden_size=256", "model.num_attention_heads=4", "model.num_query_groups=4",
        "train.seq_length=12", "logging.progress_bar=false"]
RUN = [*TINY, "train.total_steps=40", "train.eval_every=20", "checkpoint.save_every=20", "train.lr=1e-3",
       "train.global_batch_size=50", "train.micro_batch_size=50"]
LAYOUTS = {"tp1": (1, []), "tp2": (2, ["parallel=tp2"]), "pp2": (2, ["parallel=pp2"]), "dp2": (2, ["parallel=dp2"]),
           "tp2_sp": (2, ["parallel=tp2_sp"])}
KEYS = ("loss", "loss_q", "loss_v", "loss_cql", "loss_awac", "q", "v")


def metrics(run_dir) -> dict:
    return {row["step"]: row for row in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())}


@pytest.fixture(scope="module")
def walker(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("ilql") / "run"
    proc = cli(1, [*RUN, f"run_dir={run_dir}"])
    return run_dir, proc.stdout


@pytest.fixture(scope="module")
def layouts(walker, tmp_path_factory):
    root = tmp_path_factory.mktemp("ilql_layouts")
    export = walker[0] / "hf_export"
    results = {}
    for name, (nproc, overrides) in {**LAYOUTS, "tp2_pp2": (4, ["parallel=tp2_pp2"])}.items():
        out = root / f"{name}.pt"
        extra = ["--decode-only"] if name == "tp2_pp2" else []
        torchrun("ilql_checks.py", nproc, ["--out", str(out), "--export", str(export), *extra, *overrides],
                 virtual_gpu=True)
        results[name] = torch.load(out, weights_only=False)
        assert "(virtual GPU: device-discipline check)" in results[name]["runtime"], name
    return results


@pytest.fixture
def single_rank(tmp_path):
    """A one-process gloo group with Megatron's parallel state (TP1), torn down after the test."""
    import torch.distributed as dist
    from megatron.core import parallel_state

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    parallel_state.initialize_model_parallel(1, 1)
    yield
    parallel_state.destroy_model_parallel()
    dist.destroy_process_group()


def test_loss_by_hand(single_rank):
    """One sample, 2 actions, vocabulary 3, one Q head; tau 0.7, gamma 0.5, cql 0.1, awac 1, beta 0."""
    from autorlhf_nemo.algorithms.ilql.loss import ilql_loss

    logits = torch.zeros(1, 2, 3)                                  # CE = log 3 at each action
    q = torch.tensor([[[1.0, 2.0, 0.0], [0.0, 0.0, 3.0]]])         # Q(s0, a0=1) = 2, Q(s1, a1=2) = 3
    target = torch.tensor([[[0.0, 1.0, 0.0], [0.0, 0.0, 2.0]]])    # Qbar 1, 2
    v = torch.tensor([[0.5, 4.0]])
    batch = {"action_ids": torch.tensor([[1, 2]]), "action_mask": torch.ones(1, 2), "rewards": torch.tensor([[0.0, 1.0]]),
             "nonterminal_next": torch.tensor([[1.0, 0.0]])}
    loss, count, reports = ilql_loss(logits, [q], [target], v, batch, 3, tau=0.7, gamma=0.5, cql_scale=0.1,
                                     awac_scale=1.0, awac_beta=0.0)
    # y = [0 + 0.5 * V(s1) = 2, 1 + 0 (terminal)]; L_Q = (2 - 2)^2 + (3 - 1)^2 = 4
    # L_V: Qbar - V = [0.5 (>= 0: tau 0.7), -2 (< 0: 0.3)] -> 0.7 * 0.25 + 0.3 * 4 = 1.375
    # L_CQL: logsumexp([1,2,0]) - 2 and logsumexp([0,0,3]) - 3; L_AWAC: 2 log 3 (weights exp(0) = 1)
    cql = (math.log(math.exp(1) + math.exp(2) + 1) - 2) + (math.log(2 + math.exp(3)) - 3)
    assert count.item() == 2
    assert reports["loss_q"][0].item() == pytest.approx(4.0)
    assert reports["loss_v"][0].item() == pytest.approx(1.375)
    assert reports["loss_cql"][0].item() == pytest.approx(cql, rel=1e-6)
    assert reports["loss_awac"][0].item() == pytest.approx(2 * math.log(3), rel=1e-6)
    assert loss.item() == pytest.approx(4.0 + 1.375 + 0.1 * cql + 2 * math.log(3), rel=1e-6)
    _, _, weighted = ilql_loss(logits, [q], [target], v, batch, 3, 0.7, 0.5, 0.1, 1.0, awac_beta=2.0)
    # AWAC weights exp(2 (Qbar - V)) = exp(1), exp(-4)
    assert weighted["loss_awac"][0].item() == pytest.approx((math.exp(1) + math.exp(-4)) * math.log(3), rel=1e-6)


def test_loss_matches_plain_full_vocabulary_torch_at_every_layout(layouts):
    """ILQL's vocab-parallel loss vs trlX's formulas on the gathered full vocabulary, on the same
    model outputs of the first batch (every micro-batch of every rank): value and gradients
    w.r.t. logits, Q heads and V within rel 1e-4 (measured: ~1e-7)."""
    for name in LAYOUTS:
        check = layouts[name]["loss_check"]
        assert len(check["value"]) >= 2, name
        assert max(check["value"]) <= 1e-4 and max(check["grad"]) <= 1e-4, (name, check)


@pytest.mark.parametrize("layout", ["tp2", "pp2", "dp2", "tp2_sp"])
def test_updates_are_layout_invariant(layouts, layout):
    """4 optimizer steps from the same trunk and heads, with and without the frozen trunk: loss
    terms and gradient norm within rel 1e-4 of TP1 (abs 1e-6 for values near 0)."""
    for unfrozen in (-1, 2):
        base, other = layouts["tp1"][("steps", unfrozen)], layouts[layout][("steps", unfrozen)]
        assert len(base) == len(other) == 4
        for step, ((a, _), (b, _)) in enumerate(zip(base, other)):
            for key in (*KEYS, "grad_norm"):
                x, y = a[f"learn/{key}"], b[f"learn/{key}"]
                assert abs(x - y) <= 1e-4 * abs(x) + 1e-6, (layout, unfrozen, step, key, x, y)


def test_targets_sync_by_polyak_every_n_optimizer_steps(layouts):
    """steps_for_target_q_sync=2, alpha 0.5: synced after updates 2 and 4 only (trlX synced per
    epoch); after a sync the targets are exactly alpha q + (1 - alpha) target_before."""
    for name in LAYOUTS:
        for unfrozen in (-1, 2):
            steps = layouts[name][("steps", unfrozen)]
            assert [m["learn/target_synced"] for m, _ in steps] == [0.0, 1.0, 0.0, 1.0]
            assert [m["learn/updates"] for m, _ in steps] == [1, 2, 3, 4]
            assert layouts[name][("polyak", unfrozen)] <= 1e-7, name
            assert layouts[name][("moved", unfrozen)] > 1e-4, name   # the sync did change them


def test_q_guided_greedy_decoding_is_identical_at_every_layout(layouts, walker):
    """The same exported policy + heads: identical greedy walks at TP1, TP2, PP2, TP2 x PP2 (and
    DP2, TP2+SP) for beta 0, 1, 100; the betas lead to different walks somewhere."""
    base = layouts["tp1"]["decoded"]
    for name, result in layouts.items():
        assert result["decoded"] == base, name
    assert base[0.0] != base[100.0]


def test_q_guided_scores_match_the_formula_on_the_exported_heads(layouts):
    """log_softmax(logits) + beta (min_i Qbar_i - V) on vocab-parallel shards (beta 3, random hidden
    states and logits) equals the formula on the exported full tensors, at every layout."""
    for name, result in layouts.items():
        assert result["guidance"] <= 1e-5, (name, result["guidance"])


def test_heads_checkpoint_with_their_tensor_parallel_slices(layouts):
    """Save, wipe the heads, load: every head parameter is back exactly (at TP2 each rank its own
    vocabulary slice: a plain ModuleList was saved as TP-replicated, rank 0's slice everywhere)."""
    for name in LAYOUTS:
        assert layouts[name]["checkpoint"] == 0.0, name


def test_q_guided_decoding_honours_stop_sequences(layouts):
    """A stop sequence (the goal 'a') ends beta-1 walks there, as it ends plain ones."""
    responses, reasons = layouts["tp1"]["stopped"]
    full = layouts["tp1"]["decoded"][1.0]
    assert any(1 in r[:-1] for r in full)  # without the stop some walk goes on past the goal
    for response, reason, walk in zip(responses, reasons, full):
        if 1 in walk:
            assert response == walk[:walk.index(1) + 1] and reason == "stop"
        else:
            assert response == walk


def test_cli_run_sweeps_betas_and_exports_heads(walker):
    run_dir, stdout = walker
    summary = json.loads((run_dir / "summary.json").read_text())
    after = summary["after"]
    assert set(after["by_beta"]) == {"0", "1", "100"} and after["beta"] in (0.0, 1.0, 100.0)  # the task's betas
    assert after["reward"] == max(after["by_beta"].values())
    assert after["rewards"]["greedy@beta=1"] == after["by_beta"]["1"]
    assert summary["dataset"]["rows"] == 1000 and summary["dataset"]["reward_mean"] == pytest.approx(0.352, abs=1e-3)
    last = metrics(run_dir)[40]
    assert {"eval/reward@beta=0", "eval/reward@beta=100", "learn/loss_q", "learn/target_synced"} <= set(last)
    assert f"reported at beta={after['beta']:g}" in stdout
    export = run_dir / "hf_export"
    from safetensors.torch import load_file

    heads = load_file(str(export / "ilql_heads.safetensors"))
    assert heads["q_heads.1.fc2.weight"].shape == (22, 64) and heads["v_head.fc2.weight"].shape == (1, 64)
    assert json.loads((export / "ilql_heads.json").read_text())["two_qs"] is True


def test_inference_entry_point_decodes_as_the_trainer(walker, layouts):
    """python -m autorlhf_nemo.generate on the export: the walks the layout worker decoded (greedy)."""
    from autorlhf_nemo.data import randomwalks

    export = walker[0] / "hf_export"
    starts = randomwalks.make_random_walks().prompts[:3]
    for beta in (0.0, 100.0):
        proc = subprocess.run(cli_command(1, [])[:-1] + ["autorlhf_nemo.generate", str(export), "--beta", str(beta),
                                                        *[a for s in starts for a in ("--prompt", s)], *TINY],
                              env=cli_env(), capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        outputs = [json.loads(line)["output"] for line in proc.stdout.splitlines() if line.startswith("{")]
        expected = [randomwalks.decode(r) for r in layouts["tp1"]["decoded"][beta][:3]]
        assert outputs == expected, beta


def test_sigkill_then_resume_continues_exactly(walker, tmp_path):
    """Killed after the step-20 checkpoint, before its metrics were logged, then resumed: step 20's
    rows come back from the checkpoint and steps 21-40 equal the uninterrupted run's (the heads,
    target heads, optimizer and the sync clock are in the checkpoint)."""
    reference = metrics(walker[0])
    run_dir = tmp_path / "killed"
    marker = run_dir / "checkpoints" / "step_000020" / run_checkpoint.MANIFEST
    kill_after(1, [*RUN, f"run_dir={run_dir}"], marker)
    assert marker.exists() and not (run_dir / "summary.json").exists()
    for name in ("metrics.jsonl", "updates.jsonl"):  # as if killed between saving step 20 and logging it
        log = run_dir / name
        log.write_text("".join(line + "\n" for line in log.read_text().splitlines() if json.loads(line)["step"] < 20))
    resumed = cli(1, [*RUN, f"run_dir={run_dir}"])
    assert "resumed from step 20" in resumed.stdout + resumed.stderr
    after = metrics(run_dir)
    updates = [json.loads(line) for line in (run_dir / "updates.jsonl").read_text().splitlines()]
    assert [u["step"] for u in updates] == list(range(1, 41))  # step 20's row restored from the checkpoint
    for step in range(20, 41):
        row = {k: v for k, v in after[step].items() if not k.startswith("time/")}
        assert row == {k: v for k, v in reference[step].items() if not k.startswith("time/")}, step


def test_python_api_trains_on_samples_and_rewards(tmp_path):
    """autorlhf_nemo.train(samples=..., rewards=..., eval_prompts=..., reward_fn=...): algorithm=ilql and
    task=custom by default, 2 steps on SmolLM2-135M, both betas evaluated."""
    proc = subprocess.run([sys.executable, str(WORKERS / "ilql_api_run.py"), "--run-dir", str(tmp_path / "run")],
                          env=cli_env(), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    summary = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("SUMMARY "))[8:])
    assert summary["dataset"]["rows"] == 4 and summary["dataset"]["reward_mean"] == 0.0
    assert set(summary["by_beta"]) == {"0", "1"} and summary["steps"] >= 2


def test_bad_jsonl_row_is_named_by_file_line_before_any_model(tmp_path):
    import autorlhf_nemo
    from autorlhf_nemo.data.offline import OfflineDataError

    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"prompt": "Hi", "output": " Hello", "reward": 1}\n\n{"prompt": "Hi", "output": " x", "reward": NaN}\n')
    with pytest.raises(OfflineDataError, match=r"sample 1 \(.*rows.jsonl row 1 \(line 3\)\): its reward nan"):
        autorlhf_nemo.train(["model=smollm2_135m", "algorithm=ilql", f"task.dataset={rows}"])
    dropped = tmp_path / "run"
    # with drop_bad_rows the row is dropped and counted (checked up to the dataset, without training)
    from autorlhf_nemo.config.compose import compose_typed_config
    from autorlhf_nemo.jobs import offline_dataset
    from autorlhf_nemo.tasks import build_task

    cfg = compose_typed_config(["model=smollm2_135m", "algorithm=ilql", "task=custom", f"task.dataset={rows}",
                                "algorithm.drop_bad_rows=true", f"run_dir={dropped}"])
    data = offline_dataset(cfg, build_task(cfg))
    assert len(data.rows) == 1 and data.dropped["bad_reward"] == 1


@pytest.mark.parametrize("overrides, message", [
    (["algorithm.prompts_per_step=8"], "does not apply to algorithm=ilql"),
    (["algorithm.report_beta=2"], "is not one of algorithm.betas"),
    (["algorithm.tau=1.5"], "algorithm.tau"),
    (["algorithm.steps_for_target_q_sync=0"], "algorithm.steps_for_target_q_sync"),
    (["train.global_batch_size=30", "train.micro_batch_size=4"], "train.global_batch_size=30"),
    (["parallel=tp2", "algorithm.head_width=33"], "algorithm.head_width=33"),
])
def test_bad_ilql_configs_are_named(overrides, message):
    with pytest.raises(ConfigError, match=message):
        validate_config(compose_config([*TINY, *overrides]), world_size=1)
