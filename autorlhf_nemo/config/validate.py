"""Layout and config validation, run before any process group starts.

Every problem found is reported at once, each naming the offending fields and
a fix, so a job that would fail minutes into a cluster allocation fails here.
"""

from __future__ import annotations

import dataclasses
import os
import typing
from typing import Any, Mapping, Optional

from omegaconf import DictConfig, OmegaConf

from autorlhf_nemo.config.schema import RootConfig

_DTYPES = ("float32", "bfloat16", "float16")
_BACKENDS = ("auto", "nccl", "gloo")
_OPTIMIZERS = ("adam", "sgd")
_LR_DECAY_STYLES = ("constant", "linear", "cosine")
_TASKS = ("randomwalks", "sentiment", "custom")
_RECOMPUTE = (None, "selective", "full")


class ConfigError(ValueError):
    """A configuration that cannot run; the message lists every problem and its fix."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"invalid configuration ({len(problems)} problem(s)):\n{lines}")


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def _unknown_keys(schema: type, values: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Dotted names of keys in ``values`` that the dataclass ``schema`` does not declare."""
    fields = {f.name: f for f in dataclasses.fields(schema)}
    unknown = []
    for key, value in values.items():
        if key not in fields:
            close = [f for f in fields if f.startswith(str(key)[:3])]
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            unknown.append(
                f"unknown key '{prefix}{key}'{hint}: remove it; valid keys of "
                f"'{prefix.rstrip('.') or 'root'}' are {sorted(fields)}"
            )
            continue
        sub_schema = typing.get_type_hints(schema)[key]
        if isinstance(value, Mapping) and dataclasses.is_dataclass(sub_schema):
            unknown += _unknown_keys(sub_schema, value, f"{prefix}{key}.")
    return unknown


def _launcher_world_size() -> Optional[int]:
    value = os.environ.get("WORLD_SIZE")
    return int(value) if value else None


def to_container(cfg: DictConfig | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=True)
    return dict(cfg)


def validate_config(cfg: DictConfig | Mapping[str, Any], world_size: Optional[int] = None) -> None:
    """Raise :class:`ConfigError` listing every problem with ``cfg``.

    ``world_size`` defaults to ``parallel.world_size``, then to the launcher's
    ``WORLD_SIZE``; without either, only the world-independent rules are checked.
    """
    values = to_container(cfg)
    problems = _unknown_keys(RootConfig, values)
    if problems:  # the remaining checks assume the known schema
        raise ConfigError(problems)

    m, p, t = values["model"], values["parallel"], values["train"]
    tp, pp, cp = (p["tensor_model_parallel_size"], p["pipeline_model_parallel_size"],
                  p["context_parallel_size"])

    for section, name in [("parallel", "tensor_model_parallel_size"),
                          ("parallel", "pipeline_model_parallel_size"),
                          ("parallel", "context_parallel_size"),
                          ("model", "num_layers"), ("model", "hidden_size"),
                          ("model", "num_attention_heads"), ("model", "num_query_groups"),
                          ("train", "micro_batch_size"), ("train", "global_batch_size"),
                          ("train", "seq_length")]:
        if values[section][name] < 1:
            problems.append(f"{section}.{name}={values[section][name]} must be >= 1")
    if problems:
        raise ConfigError(problems)

    heads, groups = m["num_attention_heads"], m["num_query_groups"]
    if heads % groups:
        problems.append(
            f"model.num_query_groups={groups} does not divide model.num_attention_heads={heads}: "
            f"use one of {_divisors(heads)}")
    if m["kv_channels"] is None and m["hidden_size"] % heads:
        problems.append(
            f"model.hidden_size={m['hidden_size']} is not divisible by "
            f"model.num_attention_heads={heads}: set model.kv_channels explicitly")
    if heads % tp:
        problems.append(
            f"parallel.tensor_model_parallel_size={tp} does not divide "
            f"model.num_attention_heads={heads}: use a TP size in {_divisors(heads)}")
    if groups % tp:
        problems.append(
            f"parallel.tensor_model_parallel_size={tp} does not divide "
            f"model.num_query_groups={groups} (key/value heads): use a TP size in "
            f"{_divisors(groups)}")
    if m["ffn_hidden_size"] % tp:
        problems.append(
            f"parallel.tensor_model_parallel_size={tp} does not divide "
            f"model.ffn_hidden_size={m['ffn_hidden_size']}: use a TP size in "
            f"{_divisors(m['ffn_hidden_size'])}")
    divisible_by = m["make_vocab_size_divisible_by"]
    padded_vocab = -(-m["vocab_size"] // divisible_by) * divisible_by if divisible_by > 0 else 0
    if divisible_by < 1 or padded_vocab % tp:
        problems.append(
            f"model.make_vocab_size_divisible_by={divisible_by} pads the vocabulary to "
            f"{padded_vocab}, which parallel.tensor_model_parallel_size={tp} does not divide: "
            f"use a multiple of {tp} (e.g. {128 * tp if 128 % tp else 128})")
    if p["sequence_parallel"] and t["seq_length"] % tp:
        problems.append(
            f"train.seq_length={t['seq_length']} is not divisible by "
            f"parallel.tensor_model_parallel_size={tp}, as sequence parallelism needs")
    if m["num_layers"] % pp:
        problems.append(
            f"parallel.pipeline_model_parallel_size={pp} does not divide "
            f"model.num_layers={m['num_layers']}: use a PP size in {_divisors(m['num_layers'])}")
    if p["sequence_parallel"] and tp == 1:
        problems.append(
            "parallel.sequence_parallel=true needs parallel.tensor_model_parallel_size > 1: "
            "set sequence_parallel=false or raise TP")
    if cp > 1 and t["seq_length"] % (2 * cp):
        problems.append(
            f"train.seq_length={t['seq_length']} must be divisible by 2 x "
            f"parallel.context_parallel_size={cp} (load-balanced context parallelism)")
    if t["seq_length"] > m["max_position_embeddings"]:
        problems.append(
            f"train.seq_length={t['seq_length']} exceeds model.max_position_embeddings="
            f"{m['max_position_embeddings']}: shorten the sequences")
    if m["params_dtype"] not in _DTYPES:
        problems.append(f"model.params_dtype={m['params_dtype']!r}: use one of {_DTYPES}")
    if p["backend"] not in _BACKENDS:
        problems.append(f"parallel.backend={p['backend']!r}: use one of {_BACKENDS}")
    if t["optimizer"] not in _OPTIMIZERS:
        problems.append(f"train.optimizer={t['optimizer']!r}: use one of {_OPTIMIZERS}")

    if p["use_distributed_optimizer"] and t["optimizer"] != "adam":
        problems.append(
            f"parallel.use_distributed_optimizer=true supports only train.optimizer=adam (got "
            f"{t['optimizer']!r}): switch to adam or disable the distributed optimizer")

    if t["recompute"] not in _RECOMPUTE:
        problems.append(f"train.recompute={t['recompute']!r}: use null, selective or full")
    if t["lr_decay_style"] not in _LR_DECAY_STYLES:
        problems.append(f"train.lr_decay_style={t['lr_decay_style']!r}: use one of {_LR_DECAY_STYLES}")
    if values["algorithm"] is not None:
        problems += _algorithm_problems(values)

    launcher_world = _launcher_world_size()
    world = world_size or p["world_size"] or launcher_world
    if p["world_size"] and launcher_world and p["world_size"] != launcher_world:
        problems.append(
            f"parallel.world_size={p['world_size']} but the launcher started {launcher_world} "
            f"processes (WORLD_SIZE): make them agree (e.g. torchrun --nproc_per_node)")
    model_parallel = tp * pp * cp
    if world is not None:
        if world % model_parallel:
            problems.append(
                f"world size {world} is not divisible by parallel.tensor_model_parallel_size x "
                f"pipeline_model_parallel_size x context_parallel_size = {tp} x {pp} x {cp} = "
                f"{model_parallel}: launch a multiple of {model_parallel} processes or shrink "
                f"the layout")
        else:
            dp = world // model_parallel
            step = t["micro_batch_size"] * dp
            a = values["algorithm"]
            rollout_step = step * (a["minibatches"] if a else 1)
            if a and a["rollouts_per_step"] % rollout_step:
                problems.append(
                    f"algorithm.rollouts_per_step={a['rollouts_per_step']} is not divisible by "
                    f"train.micro_batch_size x data-parallel size x algorithm.minibatches = "
                    f"{t['micro_batch_size']} x {dp} x {a['minibatches']} = {rollout_step}: use a "
                    f"multiple of {rollout_step}")
            if not a and t["global_batch_size"] % step:
                problems.append(
                    f"train.global_batch_size={t['global_batch_size']} is not divisible by "
                    f"train.micro_batch_size x data-parallel size = {t['micro_batch_size']} x "
                    f"{dp} = {step}: use a global batch that is a multiple of {step}")
    if problems:
        raise ConfigError(problems)


def _algorithm_problems(values: dict) -> list[str]:
    """Rules of an RL run (algorithm, task, checkpoint sections)."""
    a, t, task, m = values["algorithm"], values["train"], values["task"], values["model"]
    problems = []
    if a["name"] != "ppo":
        problems.append(f"algorithm.name={a['name']!r} is not available yet: use algorithm=ppo")
    for name in ("rollouts_per_step", "ppo_epochs", "minibatches"):
        if a[name] < 1:
            problems.append(f"algorithm.{name}={a[name]} must be >= 1")
    if t["total_steps"] < 1:
        problems.append(f"train.total_steps={t['total_steps']} must be >= 1")
    if not 0 <= a["gamma"] <= 1 or not 0 <= a["lam"] <= 1:
        problems.append(f"algorithm.gamma={a['gamma']} and algorithm.lam={a['lam']} must lie in [0, 1]")
    if a["clip_ratio"] <= 0 or a["clip_value"] <= 0:
        problems.append("algorithm.clip_ratio and algorithm.clip_value must be > 0")
    if a["init_kl_coef"] < 0:
        problems.append(f"algorithm.init_kl_coef={a['init_kl_coef']} must be >= 0")
    if a["target_kl"] is not None and a["target_kl"] <= 0:
        problems.append(f"algorithm.target_kl={a['target_kl']} must be > 0 (or null for a fixed KL coefficient)")
    if a["scale_reward"] not in (None, "running"):
        problems.append(f"algorithm.scale_reward={a['scale_reward']!r}: use null or 'running'")
    if a["num_layers_unfrozen"] < -1 or a["num_layers_unfrozen"] == 0:
        problems.append(f"algorithm.num_layers_unfrozen={a['num_layers_unfrozen']}: use -1 (train all "
                        f"layers) or 1..{m['num_layers']} (train the top layers, share the frozen trunk)")
    if task["name"] not in _TASKS:
        problems.append(f"task.name={task['name']!r}: use one of {_TASKS} (task=randomwalks, task=sentiment)")
    if task["sampling"]["max_new_tokens"] < 1:
        problems.append(f"task.sampling.max_new_tokens={task['sampling']['max_new_tokens']} must be >= 1")
    if task["num_eval_prompts"] < 1:
        problems.append(f"task.num_eval_prompts={task['num_eval_prompts']} must be >= 1")
    if values["checkpoint"]["keep_last"] < 1:
        problems.append(f"checkpoint.keep_last={values['checkpoint']['keep_last']} must be >= 1")
    return problems
