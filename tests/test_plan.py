"""The dry-run planner (python -m autorlhf_nemo.plan): parameter counts per rank against
real ranks and against the Llama formula, memory formulas by hand, rejected plans."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from helpers import cli, cli_env
from autorlhf_nemo.plan.memory import Shapes, kv_cache_bytes, layer_activation_bytes, stage_activation_bytes

GIB = 2 ** 30


def plan_cli(*overrides: str, json_out: bool = True) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "autorlhf_nemo.plan", *overrides, *(["--json"] if json_out else [])]
    return subprocess.run(cmd, env=cli_env(), capture_output=True, text=True, timeout=600)


def llama_parameters(layers, hidden, ffn, heads, kv_heads, vocab) -> int:
    """Hugging Face Llama count: untied embedding and output, per layer q/k/v/o, gate/up/down, 2 norms."""
    head_dim = hidden // heads
    attention = hidden * (hidden + 2 * kv_heads * head_dim) + hidden * hidden
    return 2 * vocab * hidden + layers * (attention + 3 * hidden * ffn + 2 * hidden) + hidden


def test_planner_counts_equal_the_ranks_of_a_real_job():
    """tiny Llama at TP2 x PP2: the real job's per-rank counts (4 gloo ranks) = the planner's per stage."""
    real = cli(4, ["parallel=tp2_pp2"]).stdout
    per_rank = {(int(tp), int(pp)): int(n.replace(",", "")) for tp, pp, n in
                re.findall(r"tp=(\d+) pp=(\d+) dp=\d+ parameters=([\d,]+)", real)}
    replica = int(re.search(r"parameters per model replica: ([\d,]+)", real).group(1).replace(",", ""))
    proc = plan_cli("parallel=tp2_pp2", "cluster.gpus_per_node=4")
    assert proc.returncode == 0, proc.stderr
    plan = json.loads(proc.stdout)
    assert [c["trunk"] for c in plan["counts"]] == [per_rank[(0, 0)], per_rank[(0, 1)]]
    assert per_rank[(0, 0)] == per_rank[(1, 0)] and per_rank[(0, 1)] == per_rank[(1, 1)]
    assert plan["total_parameters"] == replica == llama_parameters(4, 64, 128, 4, 2, 256)  # vocab 250 -> 256


def test_llama3_70b_recipe_plan_sums_to_the_model_and_fits_80gib():
    proc = plan_cli("recipe=llama3_70b_ppo")
    assert proc.returncode == 0, proc.stderr
    plan = json.loads(proc.stdout)
    assert (plan["tp"], plan["pp"], plan["dp"], plan["world_size"]) == (8, 4, 1, 32)
    total = llama_parameters(80, 8192, 28672, 64, 8, 128256)
    assert total == 70_553_706_496
    counts = plan["counts"]
    assert [c["layers"] for c in counts] == [20, 20, 20, 20]
    # per-rank counts x 8 TP ranks (norm weights, replicated over TP, once) sum to the model
    assert sum(8 * c["trunk_sharded"] + (c["trunk"] - c["trunk_sharded"]) for c in counts) == total
    assert plan["total_parameters"] == total
    head = counts[-1]["head"]
    assert head == 8192 * 16384 // 8 + 16384 // 8 + 16384 // 8 + 1  # value head W1, b1, W2 shard, b2
    for stage, (c, m) in enumerate(zip(counts, plan["memory"])):
        params = c["trunk"] + c["head"]
        assert m["weights"] == 2 * params                        # bf16
        assert m["gradients"] == 4 * c["trainable"]              # fp32 grad buffer
        assert m["optimizer"] == 12 * c["trainable"]             # fp32 master + Adam m, v; DP1: no sharding
        assert m["reference"] == 2 * c["reference"] == 2 * c["trunk"]  # all layers train: a full copy
        assert m["logits"] == (1024 * 128256 // 8 * 10 if stage == 3 else 0)
        assert 40 * GIB < m["peak"] < 80 * GIB
    assert plan["problems"] == []


def test_llama3_8b_recipe_fits_one_node_with_the_distributed_optimizer():
    proc = plan_cli("recipe=llama3_8b_ppo")
    assert proc.returncode == 0, proc.stderr
    plan = json.loads(proc.stdout)
    assert (plan["tp"], plan["pp"], plan["dp"]) == (2, 1, 4)
    assert plan["total_parameters"] == llama_parameters(32, 4096, 14336, 32, 8, 128256) == 8_030_261_248
    m, c = plan["memory"][0], plan["counts"][0]
    assert m["optimizer"] == -(-12 * c["trainable"] // 4) and m["optimizer_unsharded"] == 12 * c["trainable"]
    assert m["peak"] < 80 * GIB


def test_oversized_plan_is_rejected_with_its_memory_figures():
    proc = plan_cli("recipe=llama3_70b_ppo", "parallel.tensor_model_parallel_size=1",
                    "parallel.pipeline_model_parallel_size=1", "parallel.sequence_parallel=false",
                    "cluster.nodes=1", "cluster.gpus_per_node=1", json_out=False)
    assert proc.returncode == 2
    assert "70,553,706,496" in proc.stdout
    assert "does not fit" in proc.stderr
    need = float(re.search(r"stage 0 needs ([\d.]+) GiB per GPU", proc.stderr).group(1))
    assert need > 1000  # 70.6e9 parameters x (2 weights + 4 grads + 12 Adam + 2 reference) bytes
    assert "weights 131.7" in proc.stderr and "cluster.gpu_memory_gib=80" in proc.stderr


def test_broken_divisibility_is_rejected_before_building():
    proc = plan_cli("recipe=llama3_70b_ppo", "parallel.tensor_model_parallel_size=3", json_out=False)
    assert proc.returncode == 2
    assert "does not divide model.num_attention_heads=64" in proc.stderr
    assert "Traceback" not in proc.stderr


# ------------------------------------------------------------- formulas by hand
SHAPES = dict(hidden=8, kv_width=4, ffn=16, vocab=32, dtype_bytes=2, tp=2, pp=2, recompute=None,
              seq_length=2, micro_batch_size=1, micro_batches=4, generation_batch=3)


def test_layer_activations_by_hand():
    # no SP: 2 B x 2 tokens x (4h = 32 replicated + (2h + 2kv + 3f = 16 + 8 + 48) / 2 = 36) = 272
    assert layer_activation_bytes(Shapes(**SHAPES, sequence_parallel=False)) == 272
    # SP: 2 x 2 x (32 + 72) / 2 = 208
    assert layer_activation_bytes(Shapes(**SHAPES, sequence_parallel=True)) == 208


@pytest.mark.parametrize("stage, in_flight", [(0, 2), (1, 1)])
def test_stage_activations_by_hand(stage, in_flight):
    sp = Shapes(**SHAPES, sequence_parallel=True)
    assert stage_activation_bytes(sp, stage, layers=3) == in_flight * 3 * 208
    full = Shapes(**{**SHAPES, "recompute": "full"}, sequence_parallel=True)
    # layer inputs 2 B x 2 tokens x 8 / 2 = 16 per layer and micro-batch, plus one layer recomputed
    assert stage_activation_bytes(full, stage, layers=3) == in_flight * 3 * 16 + 208


def test_kv_cache_by_hand():
    # 2 (k, v) x 3 layers x 3 sequences x 2 positions x (4 / 2) x 2 bytes
    assert kv_cache_bytes(Shapes(**SHAPES, sequence_parallel=False), layers=3) == 2 * 3 * 3 * 2 * 2 * 2
