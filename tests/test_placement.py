"""rollout.placement=split: validation before any process group, each role's Megatron state,
and the learner -> generator weight sync between layouts (bit for bit, with a dtype cast)."""

from __future__ import annotations

import json

import pytest
import torch

from autorlhf_nemo.config.compose import compose_config
from autorlhf_nemo.config.validate import ConfigError, validate_config
from autorlhf_nemo.rollout.weight_sync import TensorInfo, copy_overlap
from helpers import torchrun

SPLIT = ["algorithm=online_dpo", "task=custom", "rollout.placement=split"]


@pytest.mark.parametrize("overrides, world, message", [
    (["rollout.generator_ranks=2"], 2, r"rollout.generator_ranks=2 leaves no learner in a world of 2"),
    (["rollout.generator_ranks=1", "parallel=tp2", "parallel.world_size=null"], 2,
     r"the learner ranks \(world 2 - rollout.generator_ranks 1 = 1\) are not divisible"),
    (["rollout.generator_ranks=3", "rollout.generator_tensor_parallel_size=2"], 4,
     r"rollout.generator_ranks=3 is not divisible by rollout.generator_tensor_parallel_size=2"),
    (["rollout.generator_ranks=3", "rollout.generator_tensor_parallel_size=3"], 4,
     r"rollout.generator_tensor_parallel_size=3 does not divide model.num_attention_heads=4"),
    (["rollout.generator_ranks=1", "rollout.max_staleness=-1"], 2, r"rollout.max_staleness=-1 is out of range"),
    (["rollout.generator_ranks=0"], 2, r"rollout.placement=split needs rollout.generator_ranks >= 1"),
    (["rollout.generator_ranks=1", "rollout.generator_dtype=fp8"], 2, r"rollout.generator_dtype='fp8'"),
    (["rollout.generator_ranks=1", "rollout.old_logprobs=mine"], 2, r"rollout.old_logprobs='mine'"),
    (["rollout.generator_ranks=3", "algorithm.prompts_per_step=8"], 4,
     r"algorithm.prompts_per_step=8 is not divisible by the 3 generator replicas"),
])
def test_bad_split_layouts_are_named_before_any_process_group(overrides, world, message):
    with pytest.raises(ConfigError, match=message):
        validate_config(compose_config([*SPLIT, *overrides]), world_size=world)


@pytest.mark.parametrize("overrides, message", [
    (["algorithm=ilql", "task=randomwalks", "rollout.placement=split", "rollout.generator_ranks=1"],
     "does not apply to algorithm=ilql"),
    (["algorithm=online_dpo", "task=custom", "rollout.max_staleness=1"], "max_staleness=1 needs rollout.placement=split"),
    (["algorithm=online_dpo", "task=custom", "rollout.generator_ranks=1"], "generator_ranks=1 needs rollout.placement=split"),
    (["rollout.placement=split", "rollout.generator_ranks=1"], "choose an online algorithm"),
    (["algorithm=ppo", "task=custom", "rollout.placement=split", "rollout.generator_ranks=1",
      "task.sampling.top_p=0.9"], r"task.sampling.top_p=0.9: the generator's log-probs are of the filtered"),
    (["algorithm=grpo", "task=custom", "rollout.placement=split", "rollout.generator_ranks=1",
      "rollout.importance_correction=false", "rollout.old_logprobs=behaviour", "task.sampling.top_k=5"],
     r"task.sampling.top_k=5"),
])
def test_options_split_placement_does_not_support_are_refused(overrides, message):
    """(Filtered sampling stays allowed where nothing compares the two distributions: online DPO, or
    importance_correction=false with proximal old log-probs; see the test below.)"""
    with pytest.raises(ConfigError, match=message):
        validate_config(compose_config(overrides), world_size=2)


def test_filtered_sampling_is_allowed_where_no_log_probs_are_compared():
    for overrides in (["algorithm=online_dpo", "task.sampling.top_p=0.9"],
                      ["algorithm=rloo", "task.sampling.top_k=5", "rollout.importance_correction=false"]):
        validate_config(compose_config([*overrides, "task=custom", "rollout.placement=split",
                                        "rollout.generator_ranks=1"]), world_size=2)


def shards(blocks: list[torch.Tensor], size: int, dim: int) -> list[torch.Tensor]:
    """Megatron's split of a tensor made of ``len(blocks)`` interleaved blocks (partition_stride) over
    ``size`` TP ranks along ``dim``: rank r holds [block 0's part r; block 1's part r; ...]."""
    return [torch.cat([b.chunk(size, dim)[r] for b in blocks], dim) for r in range(size)]


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("dim", [0, 1])
@pytest.mark.parametrize("from_size, to_size", [(1, 2), (2, 1), (2, 4), (4, 2), (4, 1), (2, 2)])
def test_copy_overlap_reshards_between_tp_sizes(stride, dim, from_size, to_size):
    """Any learner TP -> any generator TP, plain (stride 1) or SwiGLU's fc1 ([gate part; up part]
    on each rank: stride 2), along rows or columns."""
    blocks = [torch.arange(32.0).reshape(8, 4).transpose(0, dim).contiguous() * (b + 1) + 1000 * b
              for b in range(stride)]
    sources, expected = shards(blocks, from_size, dim), shards(blocks, to_size, dim)
    for j in range(to_size):
        target = torch.full_like(expected[j], -1.0)
        copied = sum(copy_overlap(target, shard, TensorInfo("w", tuple(shard.shape), shard.dtype, dim, stride, r,
                                                            from_size), j, to_size)
                     for r, shard in enumerate(sources))
        assert copied == target.numel() and torch.equal(target, expected[j])


LAYOUT_PAIRS = {
    # learner TP2 (ranks 0-1) -> one generator at TP1 (rank 2)
    "tp2-to-tp1": (3, ["parallel=tp2"], ["rollout.generator_ranks=1"]),
    # learner PP2 with tied embeddings -> one generator at TP2: layers renumbered, the last stage's tied copy dropped
    "pp2_tied-to-tp2": (4, ["parallel=pp2", "parallel.world_size=null", "model=tiny_llama_tied"],
                        ["rollout.generator_ranks=2", "rollout.generator_tensor_parallel_size=2"]),
    # learner DP2 -> two generator replicas at TP1 in bf16 (fp32 -> bf16 cast on receipt)
    "dp2-to-2xtp1_bf16": (4, ["parallel=dp2", "parallel.world_size=null"],
                          ["rollout.generator_ranks=2", "rollout.generator_dtype=bfloat16"]),
}


@pytest.mark.parametrize("pair", list(LAYOUT_PAIRS))
def test_weight_sync_is_bit_exact_between_layouts(pair, tmp_path):
    nproc, learner, generator = LAYOUT_PAIRS[pair]
    out = tmp_path / "report.json"
    torchrun("placement_checks.py", nproc, ["--overrides", json.dumps([*SPLIT, *learner, *generator]),
                                            "--out", str(out)], timeout=300)
    report = json.loads(out.read_text())
    assert report["names"] > 0 and report["differed_before"]
    assert report["equal_after"] == [True] * report["generator_replicas"]
    assert report["equal_after_second_sync"] == [True] * report["generator_replicas"]
    assert report["sync_bytes"] > 0
    if report["generator_dtype"] == "torch.float32":  # same weights, same seeds: the same tokens
        assert all(report["tokens_equal"])
    print(f"{pair}: sync {report['sync_seconds'] * 1e3:.1f} ms, {report['sync_bytes'] / 2**20:.2f} MiB")
