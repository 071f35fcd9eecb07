"""Hydra composition, CLI overrides and layout validation (no process group needed)."""

import os
import subprocess
import sys

import pytest

from autorlhf_nemo.config import ConfigError, validate_config
from autorlhf_nemo.config.compose import compose_config
from autorlhf_nemo.config.validate import to_container

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_defaults_compose_to_typed_tree():
    cfg = compose_config()
    assert cfg.model.name == "tiny_llama"
    assert cfg.parallel.tensor_model_parallel_size == 1
    assert cfg.train.global_batch_size == 8
    validate_config(cfg, world_size=1)


@pytest.mark.parametrize("group,expected", [
    ("parallel=tp2", (2, 1, False)),
    ("parallel=pp2", (1, 2, False)),
    ("parallel=tp2_pp2", (2, 2, False)),
    ("parallel=tp2_sp", (2, 1, True)),
    ("parallel=tp8_pp4", (8, 4, True)),
    ("parallel=dp2", (1, 1, False)),
    ("parallel=single", (1, 1, False)),
])
def test_parallel_groups(group, expected):
    p = compose_config([group]).parallel
    assert (p.tensor_model_parallel_size, p.pipeline_model_parallel_size, p.sequence_parallel) == expected


@pytest.mark.parametrize("name,layers,hidden,heads,groups", [
    ("tiny_llama", 4, 64, 4, 2),
    ("smollm2_135m", 30, 576, 9, 3),
    ("llama3_8b", 32, 4096, 32, 8),
    ("llama3_70b", 80, 8192, 64, 8),
])
def test_model_groups(name, layers, hidden, heads, groups):
    m = compose_config([f"model={name}"]).model
    assert (m.num_layers, m.hidden_size, m.num_attention_heads, m.num_query_groups) == (
        layers, hidden, heads, groups)


def test_shipped_layouts_validate_with_their_models():
    validate_config(compose_config(["model=llama3_70b", "parallel=tp8_pp4", "train.global_batch_size=64",
                                    "train.seq_length=4096"]), world_size=64)
    validate_config(compose_config(["model=llama3_8b", "parallel=tp2_pp2"]), world_size=8)
    validate_config(compose_config(["model=smollm2_135m"]), world_size=1)


def test_cli_override_on_top_of_group():
    cfg = compose_config(["parallel=tp2", "parallel.pipeline_model_parallel_size=2",
                          "train.global_batch_size=16"])
    assert cfg.parallel.tensor_model_parallel_size == 2
    assert cfg.parallel.pipeline_model_parallel_size == 2
    assert cfg.train.global_batch_size == 16


def test_type_mismatch_rejected_at_composition():
    with pytest.raises(Exception, match="tensor_model_parallel_size"):
        compose_config(["parallel.tensor_model_parallel_size=two"])


def test_unknown_key_rejected_at_composition():
    with pytest.raises(Exception, match="tensor_paralel_size"):
        compose_config(["parallel.tensor_paralel_size=2"])


def test_cli_prints_composed_job_config():
    out = subprocess.run([sys.executable, "-m", "autorlhf_nemo", "--cfg", "job", "parallel=tp2",
                          "model=smollm2_135m"], capture_output=True, text=True, cwd=REPO, check=True)
    assert "tensor_model_parallel_size: 2" in out.stdout
    assert "name: smollm2_135m" in out.stdout
    assert "hidden_size: 576" in out.stdout


def _bad(overrides, world_size):
    with pytest.raises(ConfigError) as info:
        validate_config(compose_config(overrides), world_size=world_size)
    return str(info.value)


# (overrides, world size, fragments every message must contain: the fields and the fix)
BAD_CONFIGS = [
    (["parallel.tensor_model_parallel_size=3"], 3,
     ["tensor_model_parallel_size=3", "num_attention_heads=4", "[1, 2, 4]"]),
    (["model=smollm2_135m", "parallel=tp2"], 2,
     ["tensor_model_parallel_size=2", "num_attention_heads=9", "[1, 3, 9]"]),
    (["parallel.tensor_model_parallel_size=4"], 4,
     ["tensor_model_parallel_size=4", "num_query_groups=2", "[1, 2]"]),
    (["parallel.pipeline_model_parallel_size=3"], 3,
     ["pipeline_model_parallel_size=3", "num_layers=4", "[1, 2, 4]"]),
    (["parallel=tp2_pp2"], 6,
     ["world size 6", "2 x 2 x 1 = 4", "multiple of 4"]),
    (["parallel=tp2"], 3, ["world size 3", "multiple of 2"]),
    (["parallel.sequence_parallel=true"], 1,
     ["sequence_parallel=true", "tensor_model_parallel_size > 1"]),
    (["train.global_batch_size=6", "train.micro_batch_size=4"], 1,
     ["global_batch_size=6", "micro_batch_size x data-parallel size = 4 x 1 = 4"]),
    (["train.global_batch_size=6", "train.micro_batch_size=2"], 2,
     ["global_batch_size=6", "2 x 2 = 4", "multiple of 4"]),
    (["model.num_query_groups=3"], 1, ["num_query_groups=3", "num_attention_heads=4"]),
    (["parallel=tp2_sp", "train.seq_length=15", "model.max_position_embeddings=64"], 2,
     ["seq_length=15", "sequence parallelism"]),
    (["train.seq_length=512"], 1, ["seq_length=512", "max_position_embeddings=256"]),
    (["model.params_dtype=float8"], 1, ["params_dtype='float8'", "bfloat16"]),
    (["parallel.backend=mpi"], 1, ["backend='mpi'", "gloo"]),
    (["model.make_vocab_size_divisible_by=1", "model.vocab_size=251", "parallel=tp2"], 2,
     ["make_vocab_size_divisible_by=1", "251", "multiple of 2"]),
    (["parallel.context_parallel_size=2", "train.seq_length=6", "model.max_position_embeddings=64"], 2,
     ["seq_length=6", "context_parallel_size=2"]),
    (["parallel.use_distributed_optimizer=true", "train.optimizer=sgd"], 1,
     ["use_distributed_optimizer=true", "train.optimizer=adam"]),
    (["parallel.tensor_model_parallel_size=0"], 1, ["tensor_model_parallel_size=0", ">= 1"]),
    (["algorithm=ppo", "task=randomwalks", "parallel=dp2"], 2,
     ["rollouts_per_step=128", "32 x 2 x 4 = 256", "multiple of 256"]),
    (["algorithm=ppo", "task=randomwalks", "algorithm.num_layers_unfrozen=0"], 1,
     ["num_layers_unfrozen=0", "-1 (train all layers)", "1..4"]),
    (["algorithm=ppo", "task.name=chess"], 1, ["task.name='chess'", "randomwalks"]),
    (["algorithm=ppo", "algorithm.target_kl=0"], 1, ["target_kl=0", "null for a fixed KL"]),
    (["algorithm=ppo", "algorithm.scale_reward=std"], 1, ["scale_reward='std'", "'running'"]),
    (["algorithm=ppo", "train.lr_decay_style=step"], 1, ["lr_decay_style='step'", "cosine"]),
    (["train.recompute=block"], 1, ["train.recompute='block'", "selective or full"]),
]


@pytest.mark.parametrize("overrides,world,fragments", BAD_CONFIGS)
def test_bad_config_rejected_with_fields_and_fix(overrides, world, fragments):
    message = _bad(overrides, world)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} missing from:\n{message}"


@pytest.mark.parametrize("task,model,steps", [("randomwalks", "randomwalks_gpt", 30),
                                              ("sentiment", "smollm2_135m", 30)])
def test_task_configs_pick_their_model(task, model, steps):
    cfg = compose_config(["algorithm=ppo", f"task={task}"])
    assert (cfg.task.name, cfg.model.name, cfg.train.total_steps, cfg.algorithm.name) == (task, model, steps, "ppo")
    validate_config(cfg, world_size=1)
    assert compose_config(["algorithm=ppo", f"task={task}", "model=tiny_llama"]).model.name == "tiny_llama"


def test_cli_without_reward_for_custom_task_fails_clearly():
    out = subprocess.run([sys.executable, "-m", "autorlhf_nemo", "algorithm=ppo", "model=smollm2_135m"],
                         capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 2
    assert "task=custom needs prompts and a reward_fn" in out.stderr


def test_world_size_disagreeing_with_launcher(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match=r"parallel.world_size=4 but the launcher started 2"):
        validate_config(compose_config(["parallel.world_size=4"]))


def test_every_problem_reported_at_once():
    with pytest.raises(ConfigError) as info:
        validate_config(compose_config(["parallel.tensor_model_parallel_size=3",
                                        "parallel.pipeline_model_parallel_size=3"]), world_size=9)
    assert len(info.value.problems) >= 3  # heads, query groups, layers


def test_unknown_keys_in_plain_dict_rejected():
    values = to_container(compose_config())
    values["parallel"]["tensor_parallel"] = 2
    values["trainer"] = {}
    with pytest.raises(ConfigError) as info:
        validate_config(values, world_size=1)
    message = str(info.value)
    assert "unknown key 'parallel.tensor_parallel'" in message
    assert "did you mean tensor_model_parallel_size" in message
    assert "unknown key 'trainer'" in message


@pytest.mark.parametrize("recipe, world, tp, pp", [("llama3_8b_ppo", 8, 2, 1), ("llama3_70b_ppo", 32, 8, 4)])
def test_cluster_recipes_compose_and_validate_at_their_allocation(recipe, world, tp, pp):
    cfg = compose_config([f"recipe={recipe}", "model.hf_checkpoint=/models/x"])
    values = to_container(cfg)
    assert values["cluster"]["nodes"] * values["cluster"]["gpus_per_node"] == world
    assert (values["parallel"]["tensor_model_parallel_size"], values["parallel"]["pipeline_model_parallel_size"]) \
        == (tp, pp)
    assert values["algorithm"]["name"] == "ppo" and values["parallel"]["sequence_parallel"]
    validate_config(cfg, world_size=world)
    with pytest.raises(ConfigError, match=f"world size {world + 1}"):
        validate_config(cfg, world_size=world + 1)


@pytest.mark.parametrize("time, minutes", [("30", 30), ("30:15", 31), ("04:00:00", 240), ("1-00", 1440),
                                           ("1-02:30", 1590), ("2-00:00:01", 2881)])
def test_slurm_time_limits_in_minutes(time, minutes):
    from autorlhf_nemo.config.schema import slurm_minutes

    assert slurm_minutes(time) == minutes


def test_recompute_reaches_megatron_config():
    from autorlhf_nemo.models.gpt import transformer_config

    full = transformer_config(compose_config(["train.recompute=full"]))
    assert (full.recompute_granularity, full.recompute_method, full.recompute_num_layers) == ("full", "uniform", 1)
    assert transformer_config(compose_config([])).recompute_granularity is None
