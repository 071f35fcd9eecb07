"""Hydra composition, CLI overrides and layout validation (no process group needed)."""

import copy
import os
import subprocess
import sys

import pytest
from helpers import cli_env

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
    (["parallel.context_parallel_size=2"], 2,
     ["parallel.context_parallel_size=2", "context parallelism is not implemented yet", "use 1"]),
    (["parallel.use_distributed_optimizer=true", "train.optimizer=sgd"], 1,
     ["use_distributed_optimizer=true", "train.optimizer=adam"]),
    (["parallel.tensor_model_parallel_size=0"], 1, ["tensor_model_parallel_size=0", ">= 1"]),
    (["algorithm=ppo", "task=randomwalks", "parallel=dp2"], 2,
     ["prompts_per_step=128", "each of its 4 minibatches 16 learner rows",
      "train.micro_batch_size=32 does not divide", "divides 16"]),
    (["algorithm=ppo", "task=randomwalks", "algorithm.num_layers_unfrozen=0"], 1,
     ["num_layers_unfrozen=0", "-1 (train all layers)", "1..4"]),
    (["algorithm=ppo", "task.name=chess"], 1, ["task.name='chess'", "randomwalks"]),
    (["task.name=chess"], 1, ["task.name='chess'", "randomwalks"]),   # checked without an algorithm too
    (["algorithm=ppo", "algorithm.target_kl=0"], 1, ["target_kl=0", "null for a fixed KL"]),
    (["algorithm=ppo", "algorithm.scale_reward=std"], 1, ["scale_reward='std'", "'running'"]),
    (["algorithm=ppo", "train.lr_decay_style=step"], 1, ["lr_decay_style='step'", "cosine"]),
    (["train.recompute=block"], 1, ["train.recompute='block'", "'selective' or 'full'"]),
    (["algorithm=ppo", "task=randomwalks", "parallel=dp2", "algorithm.minibatches=2",
      "task.pretrain_batch_size=97"], 2,
     ["task.pretrain_batch_size=97", "data-parallel size 2", "multiple of 2"]),
    (["algorithm=ppo", "train.lr_warmup_steps=8", "train.total_steps=2", "algorithm.epochs=2"], 1,
     ["train.lr_warmup_steps=8", "4 optimizer steps"]),
    (["algorithm=online_dpo", "task=randomwalks", "algorithm.samples_per_prompt=1"], 1,
     ["algorithm=online_dpo compares the samples of a prompt", "samples_per_prompt=1 must be at least 2"]),
    (["algorithm=rloo", "task=randomwalks", "algorithm.samples_per_prompt=1"], 1, ["samples_per_prompt=1"]),
    (["algorithm=grpo", "task=randomwalks", "algorithm.samples_per_prompt=1"], 1, ["samples_per_prompt=1"]),
    (["algorithm=grpo", "task=randomwalks", "algorithm.prompts_per_step=100", "parallel=dp2"], 2,
     ["algorithm.prompts_per_step=100", "data-parallel size x algorithm.minibatches = 2 x 4 = 8",
      "one rank and in one minibatch", "multiple of 8"]),
    (["algorithm=online_dpo", "task=randomwalks", "train.micro_batch_size=3", "algorithm.prompts_per_step=96",
      "algorithm.minibatches=2"], 1,
     ["train.micro_batch_size=3 must be even", "(chosen, rejected) pairs"]),
    (["algorithm=grpo", "task=randomwalks", "train.micro_batch_size=24"], 1,
     ["train.micro_batch_size=24 does not divide", "each of its 4 minibatches 128 learner rows"]),
    (["algorithm=online_dpo", "algorithm.loss_type=hinge"], 1, ["algorithm.loss_type='hinge'", "'ipo'"]),
    (["algorithm=grpo", "algorithm.loss_aggregation=mean"], 1, ["loss_aggregation='mean'", "'sequence'"]),
    (["algorithm=rloo", "algorithm.penalty_mode=clip"], 1, ["penalty_mode='clip'", "'replace'"]),
    (["algorithm=grpo", "algorithm.clip_low=1.5"], 1, ["algorithm.clip_low=1.5 is out of range", "[0, 1)"]),
    (["algorithm=online_dpo", "algorithm.beta=0"], 1, ["algorithm.beta=0.0 is out of range", "> 0"]),
    (["algorithm=grpo", "task.sampling.temperature=0"], 1, ["temperature=0 samples greedily", "temperature > 0"]),
    (["algorithm=ppo", "task.eval_greedy=false", "task.eval_seeds=[]"], 1, ["evaluates nothing"]),
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


@pytest.mark.parametrize("algorithm", ["ppo", "online_dpo", "rloo", "grpo"])
@pytest.mark.parametrize("task", ["randomwalks", "sentiment", "custom"])
def test_every_algorithm_composes_with_every_task(algorithm, task):
    """conf/task_algorithm/<task>_<algorithm>.yaml gives each pair its settings; every pair
    validates (one process) and becomes that algorithm's typed config."""
    from autorlhf_nemo.config.schema import ALGORITHMS, typed_config

    cfg = compose_config([f"algorithm={algorithm}", f"task={task}"])
    validate_config(cfg, world_size=1)
    typed = typed_config(cfg)
    assert type(typed.algorithm) is ALGORITHMS[algorithm] and typed.task.name == task
    assert typed.algorithm.samples_per_prompt == (1 if algorithm == "ppo" else 2 if algorithm == "online_dpo" else 4)


def test_randomwalks_defaults_are_the_benchmark():
    """trlX's graph (seed 1000), 128 prompts per step for every algorithm, greedy evaluation only."""
    for algorithm in ("ppo", "online_dpo", "rloo", "grpo"):
        cfg = compose_config([f"algorithm={algorithm}", "task=randomwalks"])
        assert cfg.task.graph_seed == 1000 and cfg.algorithm.prompts_per_step == 128
        assert cfg.task.eval_greedy and list(cfg.task.eval_seeds) == []


def test_algorithm_registries_agree():
    from autorlhf_nemo import algorithms
    from autorlhf_nemo.config.schema import ALGORITHMS

    assert sorted(algorithms._MODULES) == sorted(ALGORITHMS)


@pytest.mark.parametrize("overrides", [["algorithm=grpo", "algorithm.vf_coef=0.5"],
                                       ["algorithm=online_dpo", "algorithm.clip_high=0.28"]])
def test_option_of_another_algorithm_named_on_the_cli(overrides):
    """Hydra alone would call it an unknown key and suggest '+'; we name the algorithm it belongs to,
    in seconds, before torch loads."""
    out = subprocess.run([sys.executable, "-m", "autorlhf_nemo", *overrides], capture_output=True, text=True,
                         cwd=REPO, env=cli_env(), timeout=120)
    key = overrides[1].split("=")[0]
    owner = "ppo" if key == "algorithm.vf_coef" else "grpo"
    assert out.returncode == 2, out.stderr
    assert f"{key} is an option of algorithm={owner}, not of algorithm={overrides[0].split('=')[1]}" in out.stderr
    assert "Traceback" not in out.stderr


def test_renamed_options_named_with_their_new_names():
    out = subprocess.run([sys.executable, "-m", "autorlhf_nemo", "algorithm=ppo", "algorithm.rollouts_per_step=32",
                          "algorithm.ppo_epochs=2"], capture_output=True, text=True, cwd=REPO, env=cli_env(),
                         timeout=120)
    assert out.returncode == 2
    assert "algorithm.rollouts_per_step was renamed: use algorithm.prompts_per_step" in out.stderr
    assert "algorithm.ppo_epochs was renamed: use algorithm.epochs" in out.stderr


def test_option_of_another_algorithm_named_by_the_api_and_in_plain_values():
    import autorlhf_nemo

    with pytest.raises(ConfigError, match=r"algorithm.beta is an option of algorithm=online_dpo, "
                                          r"algorithm=grpo and algorithm=dpo, not of algorithm=rloo"):
        autorlhf_nemo.train(["algorithm=rloo", "algorithm.beta=0.1"], reward_fn=lambda samples, **_: [0.0],
                            prompts=["x"])
    values = to_container(compose_config(["algorithm=grpo"]))
    values["algorithm"]["gamma"] = 0.99
    with pytest.raises(ConfigError, match=r"algorithm.gamma is an option of algorithm=ppo and "
                                          r"algorithm=ilql, not of algorithm=grpo: remove it, or pick"):
        validate_config(values, world_size=1)


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
    from autorlhf_nemo.config.schema import typed_config
    from autorlhf_nemo.models.gpt import transformer_config

    full = transformer_config(typed_config(compose_config(["train.recompute=full"])))
    assert (full.recompute_granularity, full.recompute_method, full.recompute_num_layers) == ("full", "uniform", 1)
    assert transformer_config(typed_config(compose_config([]))).recompute_granularity is None


# Numeric ranges: (override on the default randomwalks PPO run, fragment naming the field and value).
BAD_NUMBERS = [
    ("train.lr=-1", "train.lr=-1.0"),
    ("train.lr=nan", "train.lr=nan"),
    ("train.lr=inf", "train.lr=inf"),
    ("train.min_lr=1e-3", "train.min_lr=0.001"),          # above train.lr=5e-5
    ("train.weight_decay=-0.1", "train.weight_decay=-0.1"),
    ("train.adam_beta1=1", "train.adam_beta1=1.0"),
    ("train.adam_beta2=-0.1", "train.adam_beta2=-0.1"),
    ("train.adam_eps=0", "train.adam_eps=0.0"),
    ("train.clip_grad=-1", "train.clip_grad=-1.0"),
    ("train.lr_warmup_steps=-1", "train.lr_warmup_steps=-1"),
    ("train.lr_decay_steps=0", "train.lr_decay_steps=0"),
    ("train.eval_every=-1", "train.eval_every=-1"),
    ("train.seed=-1", "train.seed=-1"),
    ("train.total_steps=0", "train.total_steps=0"),
    ("parallel.timeout_minutes=0", "parallel.timeout_minutes=0"),
    ("parallel.world_size=0", "parallel.world_size=0"),
    ("algorithm.kl_horizon=0", "algorithm.kl_horizon=0"),
    ("algorithm.vf_coef=-1", "algorithm.vf_coef=-1.0"),
    ("algorithm.entropy_coef=-0.01", "algorithm.entropy_coef=-0.01"),
    ("algorithm.clip_reward=0", "algorithm.clip_reward=0.0"),
    ("algorithm.gamma=1.5", "algorithm.gamma=1.5"),
    ("algorithm.init_kl_coef=nan", "algorithm.init_kl_coef=nan"),
    ("algorithm.value_head_seed=-1", "algorithm.value_head_seed=-1"),
    ("task.sampling.temperature=-1", "task.sampling.temperature=-1.0"),
    ("task.sampling.top_k=-1", "task.sampling.top_k=-1"),
    ("task.sampling.top_k=100", "task.sampling.top_k=100"),       # more than the 22-token vocabulary
    ("task.sampling.top_p=0", "task.sampling.top_p=0.0"),
    ("task.sampling.top_p=1.5", "task.sampling.top_p=1.5"),
    ("task.sampling.min_new_tokens=10", "task.sampling.min_new_tokens=10"),   # above max_new_tokens=9
    ("task.sampling.max_new_tokens=0", "task.sampling.max_new_tokens=0"),
    ("task.pretrain_steps=-1", "task.pretrain_steps=-1"),
    ("task.pretrain_lr=0", "task.pretrain_lr=0.0"),
    ("task.pretrain_batch_size=0", "task.pretrain_batch_size=0"),
    ("model.norm_epsilon=0", "model.norm_epsilon=0.0"),
    ("model.init_method_std=0", "model.init_method_std=0.0"),
    ("model.rotary_base=0", "model.rotary_base=0.0"),
    ("model.rope_scaling_factor=0", "model.rope_scaling_factor=0.0"),
    ("model.kv_channels=0", "model.kv_channels=0"),
    ("model.ffn_hidden_size=0", "model.ffn_hidden_size=0"),
    ("model.vocab_size=0", "model.vocab_size=0"),
    ("checkpoint.save_every=-1", "checkpoint.save_every=-1"),
    ("checkpoint.keep_last=0", "checkpoint.keep_last=0"),
    ("logging.num_samples=-1", "logging.num_samples=-1"),
    ("cluster.nodes=0", "cluster.nodes=0"),
    ("cluster.gpu_memory_gib=0", "cluster.gpu_memory_gib=0.0"),
    ("cluster.reserved_memory_gib=80", "cluster.reserved_memory_gib=80.0"),   # all of gpu_memory_gib
    ("cluster.master_port=70000", "cluster.master_port=70000"),
    ("cluster.cpus_per_task=0", "cluster.cpus_per_task=0"),
]


@pytest.mark.parametrize("override,fragment", BAD_NUMBERS)
def test_number_out_of_range_is_named(override, fragment):
    message = _bad(["algorithm=ppo", "task=randomwalks", override], 1)
    line = next((line for line in message.splitlines() if fragment in line), None)
    assert line is not None, f"{fragment!r} missing from:\n{message}"
    assert "use " in line, f"no fix in {line!r}"


def _numeric_fields(schema, prefix=""):
    """Dotted names and types of every int/float field (optional or not) under ``schema``."""
    import dataclasses
    import typing

    for f in dataclasses.fields(schema):
        kind = typing.get_type_hints(schema)[f.name]
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        kind = args[0] if typing.get_origin(kind) is typing.Union and len(args) == 1 else kind
        if dataclasses.is_dataclass(kind):
            yield from _numeric_fields(kind, f"{prefix}{f.name}.")
        elif kind in (int, float):
            yield f"{prefix}{f.name}", kind


@pytest.mark.parametrize("algorithm", ["ppo", "online_dpo", "rloo", "grpo"])
def test_every_numeric_field_has_a_range(algorithm):
    """No numeric field is left unchecked: a huge negative number (and NaN for floats) in any
    of them is rejected with the field named (the algorithm's own fields included)."""
    from autorlhf_nemo.config.schema import ALGORITHMS, RootConfig

    base = to_container(compose_config([f"algorithm={algorithm}", "task=randomwalks"]))
    fields = [f for f in _numeric_fields(RootConfig) if not f[0].startswith("algorithm.")]
    fields += list(_numeric_fields(ALGORITHMS[algorithm], "algorithm."))
    assert len(fields) > 55 and ("task.sampling.top_p", float) in fields and ("task.graph_seed", int) in fields
    assert ("algorithm.kl_horizon", int) in fields or algorithm != "ppo"
    for name, kind in fields:
        for bad in ([-10**9] if kind is int else [-1e9, float("nan")]):
            values = copy.deepcopy(base)
            *path, key = name.split(".")
            section = values
            for part in path:
                section = section[part]
            section[key] = bad
            with pytest.raises(ConfigError) as info:
                validate_config(values, world_size=1)
            assert f"{name}={bad}" in str(info.value), str(info.value)


def test_range_problems_are_reported_together_with_layout_problems():
    message = _bad(["algorithm=ppo", "task=randomwalks", "train.lr=-1", "algorithm.kl_horizon=0",
                    "parallel.tensor_model_parallel_size=3"], 3)
    for fragment in ("train.lr=-1.0", "algorithm.kl_horizon=0", "tensor_model_parallel_size=3"):
        assert fragment in message, message


def test_cli_rejects_a_bad_number_before_any_model_work():
    """Exit 2 with the field named, no traceback, and megatron/torch never imported (-X importtime
    lists every module the process loaded)."""
    out = subprocess.run([sys.executable, "-X", "importtime", "-m", "autorlhf_nemo", "algorithm=ppo",
                          "task=randomwalks", "train.lr=-1"], capture_output=True, text=True, cwd=REPO,
                         env=cli_env(), timeout=300)
    assert out.returncode == 2, out.stderr[-3000:]
    assert "train.lr=-1.0 is out of range: use a value > 0" in out.stderr
    assert "Traceback" not in out.stdout + out.stderr
    imported = {line.rsplit("|", 1)[1].strip() for line in out.stderr.splitlines() if line.startswith("import time:")}
    assert "hydra" in imported and not {"torch", "megatron.core"} & imported


def test_context_parallelism_is_rejected_until_implemented():
    message = _bad(["model=llama3_70b", "parallel=tp8_pp4", "parallel.context_parallel_size=2",
                    "train.seq_length=4096"], 64)
    assert "parallel.context_parallel_size=2: context parallelism is not implemented yet; use 1" in message


@pytest.mark.parametrize("world, minibatches", [(2, 2), (4, 1)])
def test_randomwalks_pretraining_validates_at_dp(world, minibatches):
    validate_config(compose_config(["algorithm=ppo", "task=randomwalks", f"algorithm.minibatches={minibatches}"]),
                    world_size=world)


README_API_OVERRIDES = ["model=smollm2_135m", "train.total_steps=20", "task.chat_template=true"]


def _api_config(monkeypatch, overrides):
    """The config autorlhf_nemo.train(overrides, reward_fn=..., prompts=...) runs (run_rl stubbed)."""
    import autorlhf_nemo
    from autorlhf_nemo import jobs

    monkeypatch.setattr(jobs, "run_rl", lambda cfg, **kwargs: cfg)
    return autorlhf_nemo.train(overrides, reward_fn=lambda samples, **_: [0.0] * len(samples), prompts=["Hi."])


def test_python_api_custom_task_has_cheap_defaults(monkeypatch):
    """The README's API example gets conf/task/custom.yaml: sentiment's per-step cost, the user's model."""
    values = to_container(_api_config(monkeypatch, README_API_OVERRIDES))
    assert values["task"]["name"] == "custom" and values["model"]["name"] == "smollm2_135m"
    assert values["task"]["chat_template"] and values["train"]["total_steps"] == 20
    a = values["algorithm"]
    assert (values["train"]["micro_batch_size"], a["prompts_per_step"], a["epochs"], a["minibatches"],
            a["num_layers_unfrozen"], values["task"]["sampling"]["max_new_tokens"]) == (8, 16, 1, 1, 8, 32)
    validate_config(values, world_size=1)
    assert to_container(_api_config(monkeypatch, []))["model"]["name"] == "tiny_llama"   # the root default


def test_python_api_with_a_recipe_keeps_the_recipe(monkeypatch):
    values = to_container(_api_config(monkeypatch, ["recipe=llama3_8b_ppo", "model.hf_checkpoint=/models/x"]))
    a = values["algorithm"]
    assert values["task"]["name"] == "custom" and values["model"]["name"] == "llama3_8b"
    assert (values["train"]["micro_batch_size"], a["prompts_per_step"], a["num_layers_unfrozen"]) == (4, 256, -1)
