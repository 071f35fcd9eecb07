"""The dry-run planner (python -m autorlhf_nemo.plan): parameter counts per rank against
real ranks and against the Llama formula, memory formulas by hand, rejected plans."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from helpers import cli, cli_env
from autorlhf_nemo.plan.memory import (GIB, Shapes, kv_cache_bytes, layer_activation_bytes, logits_bytes,
                                       stage_activation_bytes)
from autorlhf_nemo.plan.planner import ILQLHeads

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


# ------------------------------------------------------------- ILQL's heads
LLAMA3_VOCAB = 128256  # a multiple of 128: no padding


def test_ilql_head_parameters_by_hand():
    """The issue's figures: at w = 2h a Q head is h 2h + 2h V (+ biases 2h + V)."""
    q70 = ILQLHeads(hidden=8192, width=16384, vocab=LLAMA3_VOCAB, q_heads=2)
    assert q70.q() == 8192 * 16384 + 16384 + 16384 * LLAMA3_VOCAB + LLAMA3_VOCAB == 2_235_708_672  # ~2.24e9
    assert 4 * q70.q() == 8_942_834_688                              # two Q + two target: ~9e9
    assert q70.v() == 8192 * 16384 + 16384 + 16384 + 1 == 134_250_497
    assert q70.total() == q70.v() + 4 * q70.q() and q70.trainable() == q70.v() + 2 * q70.q()
    q8 = ILQLHeads(hidden=4096, width=8192, vocab=LLAMA3_VOCAB, q_heads=2)
    assert q8.q() == 1_084_364_032                                   # ~1.1e9
    # per TP rank (w = h = 8192, TP8): fc1 and Q's fc2 split 8 ways, V's fc2 bias whole on every rank
    at_h = q70.at_width(8192)
    assert at_h.v(tp=8) == (8192 * 8192 + 8192 + 8192) // 8 + 1 == 8_390_657
    assert at_h.q(tp=8) == (8192 * 8192 + 8192 + 8192 * LLAMA3_VOCAB + LLAMA3_VOCAB) // 8 == 139_739_808
    assert ILQLHeads(4096, 4096, LLAMA3_VOCAB, q_heads=1).total() == \
        (4096 * 4096 + 2 * 4096 + 1) + 2 * (4096 * 4096 + 4096 + 4096 * LLAMA3_VOCAB + LLAMA3_VOCAB)


def test_llama3_70b_ilql_recipe_holds_the_heads_on_the_last_stage_and_fits_80gib():
    proc = plan_cli("recipe=llama3_70b_ilql")
    assert proc.returncode == 0, proc.stderr
    plan = json.loads(proc.stdout)
    assert (plan["tp"], plan["pp"], plan["dp"], plan["world_size"], plan["algorithm"]) == (8, 4, 1, 32, "ilql")
    assert plan["ilql_heads"] == {"hidden": 8192, "width": 8192, "vocab": LLAMA3_VOCAB, "q_heads": 2}
    assert plan["total_parameters"] == 70_553_706_496               # the heads are not the model's
    v, q = 8_390_657, 139_739_808                                    # per TP rank, w = h (by hand above)
    counts, memory = plan["counts"], plan["memory"]
    assert [c["head"] for c in counts] == [0, 0, 0, v + 4 * q] == [0, 0, 0, 567_349_889]
    for stage, (c, m) in enumerate(zip(counts, memory)):
        trained_heads = v + 2 * q if stage == 3 else 0               # target Q heads: weights only
        assert c["trainable"] == c["trunk"] + trained_heads
        assert c["reference"] == 0 and m["reference"] == 0         # ILQL has no reference model
        # the trunk in bf16 (2 B, Adam 12 B with the fp32 master), the heads in fp32 (4 B, Adam 8 B)
        assert m["weights"] == 2 * c["trunk"] + 4 * c["head"]
        assert m["gradients"] == 4 * c["trainable"]
        assert m["optimizer"] == 12 * c["trunk"] + 8 * trained_heads
        # LM logits (10 B), 2 fp32 Q outputs (12 B), 2 fp32 target Q outputs (4 B): s b V/t x 42
        assert m["logits"] == (1024 * LLAMA3_VOCAB // 8 * 42 if stage == 3 else 0)
        assert m["peak"] < 80 * GIB
    assert plan["problems"] == []


def test_planner_prints_the_ilql_heads_at_w_and_at_2h():
    proc = plan_cli("recipe=llama3_70b_ilql", json_out=False)
    assert proc.returncode == 0, proc.stderr
    line = next(line for line in proc.stdout.splitlines() if line.startswith("ILQL heads"))
    assert "at w=8192" in line
    assert "V 67,125,249 + 2 Q + 2 target Q x 1,117,918,464 = 4,538,799,105 (4.54e9; 567,349,889 per TP rank)" in line
    # w = 2h: V 134,250,497 + 4 x 2,235,708,672
    assert "w=2h=16384 would hold 9,077,085,185 (9.08e9;" in line


def test_ilql_last_stage_exceeds_a_no_heads_run_by_the_heads_exactly():
    """Same model and layout with and without algorithm=ilql: the first stages are equal; the last
    holds the heads' weights (fp32), their gradients (fp32) and Adam state (8 B; DP1, unsharded)
    for the V and Q heads, and the Q and target Q outputs beside the logits. No reference."""
    layout = ["model=llama3_70b", "parallel=tp8_pp4", "cluster.nodes=4", "cluster.gpus_per_node=8",
              "train.seq_length=1024", "train.micro_batch_size=1", "train.global_batch_size=32",
              "train.recompute=full", "parallel.use_distributed_optimizer=true"]
    runs = []
    for overrides in (layout, [*layout, "algorithm=ilql"]):
        proc = plan_cli(*overrides)
        assert proc.returncode == 0, proc.stderr
        runs.append(json.loads(proc.stdout))
    base, ilql = runs
    heads_all, heads_trained = 8_390_657 + 4 * 139_739_808, 8_390_657 + 2 * 139_739_808
    for stage in range(4):
        b, m = base["memory"][stage], ilql["memory"][stage]
        assert m["reference"] == b["reference"] == 0
        assert m["activations"] == b["activations"]
        static = lambda x: x["weights"] + x["gradients"] + x["optimizer"]
        extra = 4 * heads_all + (4 + 8) * heads_trained if stage == 3 else 0
        assert static(m) - static(b) == extra
        assert m["logits"] - b["logits"] == (1024 * LLAMA3_VOCAB // 8 * (2 * 12 + 2 * 4) if stage == 3 else 0)
    assert 4 * heads_all + 12 * heads_trained == 5_723_842_832     # 5.33 GiB per GPU on stage 3


def test_llama3_8b_ilql_recipe_fits_one_node():
    proc = plan_cli("recipe=llama3_8b_ilql")
    assert proc.returncode == 0, proc.stderr
    plan = json.loads(proc.stdout)
    assert (plan["tp"], plan["pp"], plan["dp"]) == (2, 1, 4)
    v = (4096 * 4096 + 2 * 4096) // 2 + 1                            # per TP rank, w = h = 4096
    q = (4096 * 4096 + 4096 + 4096 * LLAMA3_VOCAB + LLAMA3_VOCAB) // 2
    c, m = plan["counts"][0], plan["memory"][0]
    assert c["head"] == v + 4 * q == 1_092_884_993
    assert c["trainable"] == c["trunk"] + v + 2 * q and c["reference"] == m["reference"] == 0
    assert m["optimizer"] == -(-(12 * c["trunk"] + 8 * (v + 2 * q)) // 4)   # distributed over DP4
    assert m["peak"] < 80 * GIB and plan["problems"] == []


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


def test_logits_with_ilql_q_heads_by_hand():
    # s b V/t = 2 x 1 x 16 entries; LM logits at 2 + 8 B, 2 fp32 Q outputs at 12 B, 2 targets at 4 B
    assert logits_bytes(Shapes(**SHAPES, sequence_parallel=False)) == 32 * 10
    assert logits_bytes(Shapes(**SHAPES, sequence_parallel=False, q_heads=2)) == 32 * (10 + 2 * 12 + 2 * 4)


def test_llama3_8b_split_recipe_fits_6_learners_and_2_generators():
    """6 learner GPUs (TP2 x DP3) + 2 generator GPUs (two TP1 bf16 replicas): the generator holds
    the whole model (8.03e9 x 2 B) and the KV cache of its 192 rows x 1024 tokens; a sending
    learner rank also keeps its weight snapshot."""
    proc = plan_cli("recipe=llama3_8b_online_dpo_split")
    assert proc.returncode == 0, proc.stderr
    plan = json.loads(proc.stdout)
    assert (plan["world_size"], plan["generator_ranks"], plan["generator_tp"]) == (8, 2, 1)
    assert (plan["tp"], plan["pp"], plan["dp"]) == (2, 1, 3)
    m, c, g = plan["memory"][0], plan["counts"][0], plan["generator"]
    assert m["sync_snapshot"] == 2 * c["trunk"]
    assert m["optimizer"] == -(-12 * c["trainable"] // 3)
    assert m["kv_cache"] == kv_cache_bytes(Shapes(4096, 1024, 14336, 128256, 2, 2, 1, True, "selective", 1024, 4, 8,
                                                  -(-96 // 3)), 32)  # evaluation only: 96 prompts over DP3
    assert g["parameters"] == 8_030_261_248 and g["weights"] == 2 * 8_030_261_248
    assert g["kv_cache"] == 2 * 32 * 192 * 1024 * 1024 * 2 == 24 * GIB   # 192 rows = 192 prompts x 2 / 2 replicas
    assert g["receive"] == 2 * c["trunk"] + 8_030_261_248  # one sender's buffer + the first sync's int8 coverage map
    assert m["peak"] < 80 * GIB and plan["problems"] == []


def test_llama3_70b_split_recipe_fits_32_learners_and_8_generators():
    proc = plan_cli("recipe=llama3_70b_online_dpo_split")
    assert proc.returncode == 0, proc.stderr
    plan = json.loads(proc.stdout)
    assert (plan["world_size"], plan["tp"], plan["pp"], plan["dp"]) == (40, 8, 4, 1)
    g = plan["generator"]
    sharded = sum(c["trunk_sharded"] for c in plan["counts"]) * 8
    replicated = sum(c["trunk"] - c["trunk_sharded"] for c in plan["counts"])
    assert g["parameters"] == sharded // 4 + replicated and g["weights"] == 2 * g["parameters"]
    assert g["kv_cache"] == 2 * 80 * 128 * 1024 * (8 * 128 // 4) * 2         # 64 prompts x 2 per replica
    assert all(m["peak"] < 80 * GIB for m in plan["memory"]) and g["peak"] < 80 * GIB
    assert plan["problems"] == []


def test_the_papers_7_plus_1_split_does_not_fit_with_megatron():
    """7 learner GPUs can only be TP1 x DP7: the planner names what does not fit."""
    proc = plan_cli("recipe=llama3_8b_online_dpo_split", "rollout.generator_ranks=1",
                    "parallel.tensor_model_parallel_size=1", "parallel.sequence_parallel=false",
                    "algorithm.prompts_per_step=224", json_out=False)
    assert proc.returncode == 2
    need = float(re.search(r"stage 0 needs ([\d.]+) GiB per GPU", proc.stderr).group(1))
    assert need > 100 and "weight-sync snapshot 15.0" in proc.stderr


@pytest.mark.parametrize("size,layout", [("8b", (2, 1, 4)), ("70b", (8, 4, 1))])
def test_sft_and_dpo_recipes_fit_and_count_the_reference_where_it_is_resident(size, layout):
    """SFT and DPO recipes: no reference (precomputed); DPO with reference=online holds a full frozen
    copy (as many parameters as the trunk), unless offloaded; the micro-batches of a DPO step count
    its pairs twice (2 sequences each)."""
    plans = {}
    for name, extra in (("sft", []), ("dpo", []), ("online", ["algorithm.reference=online"]),
                        ("offloaded", ["algorithm.reference=online", "algorithm.offload_reference=true"])):
        proc = plan_cli(f"recipe=llama3_{size}_{'sft' if name == 'sft' else 'dpo'}", *extra)
        assert proc.returncode == 0, proc.stderr
        plans[name] = json.loads(proc.stdout)
        assert (plans[name]["tp"], plans[name]["pp"], plans[name]["dp"]) == layout
        assert plans[name]["problems"] == [] and all(m["peak"] < 80 * GIB for m in plans[name]["memory"])
    for name in ("sft", "dpo", "offloaded"):
        assert all(m["reference"] == 0 for m in plans[name]["memory"]), name
    assert all(c["reference"] == c["trunk"] for c in plans["online"]["counts"])
    assert all(m["reference"] > 0 for m in plans["online"]["memory"])
    assert plans["dpo"]["memory"] == plans["sft"]["memory"]   # 64 pairs = 128 sequences, as SFT's 128 rows
