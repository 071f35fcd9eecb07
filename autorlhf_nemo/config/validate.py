"""Layout and config validation, run before any process group starts.

Every numeric field has a range (NaN and infinities are out of every range),
then come the layout and batch rules. Every problem found is reported at once,
each naming the offending fields and a fix, so a job that would fail minutes
into a cluster allocation fails here.
"""

from __future__ import annotations

import dataclasses
import math
import os
import typing
from types import MappingProxyType
from typing import Any, Mapping, Optional

from omegaconf import DictConfig, OmegaConf

from autorlhf_nemo.config.errors import ConfigError
from autorlhf_nemo.config.schema import (ALGORITHMS, OFFLINE_ALGORITHMS, SUPERVISED_ALGORITHMS, AlgorithmConfig,
                                         RootConfig)

def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


@dataclasses.dataclass(frozen=True)
class Range:
    """The valid values of a numeric field: ``low``..``high``, each end open or closed. ``high``
    may name another field (its dotted name): that field's value bounds this one once it is
    valid itself (a positive number); until then there is no upper bound."""

    low: float
    high: float | str = math.inf
    low_open: bool = False
    high_open: bool = False
    nullable: bool = False
    note: str = ""

    def holds(self, value: Any, values: Optional[dict] = None) -> bool:
        if value is None:
            return self.nullable
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return False  # NaN and infinities too
        high = self.high
        if isinstance(high, str):  # another field: no bound without the config's values
            bound = _lookup(values, high) if values is not None else None
            high = bound if Range(0, low_open=True).holds(bound) else math.inf
        above = self.low < value if self.low_open else self.low <= value
        below = value < high if self.high_open else value <= high
        return above and below

    def __str__(self) -> str:
        low, high = (b if isinstance(b, str) else str(b) if isinstance(b, int) else f"{b:g}"
                     for b in (self.low, self.high))
        if self.high == math.inf:
            text = f"{'>' if self.low_open else '>='} {low}"
        else:
            text = f"in {'(' if self.low_open else '['}{low}, {high}{')' if self.high_open else ']'}"
        return text + (", or null" if self.nullable else "") + (f" ({self.note})" if self.note else "")


def _at_least(low: float, **kwargs) -> Range:
    return Range(low, **kwargs)


def _above(low: float, **kwargs) -> Range:
    return Range(low, low_open=True, **kwargs)


@dataclasses.dataclass(frozen=True)
class Choices:
    """The valid values of a string field (None: null is one of them)."""

    values: tuple
    note: str = ""

    def holds(self, value: Any) -> bool:
        return value in self.values

    def __str__(self) -> str:
        names = ["null" if v is None else repr(v) for v in self.values]
        text = names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"
        return text + (f" ({self.note})" if self.note else "")


DTYPES = ("float32", "bfloat16", "float16")


def _frozen(tables: dict[str, dict]) -> Mapping[str, Mapping]:
    """A read-only table of read-only tables: the rules below are shared by every caller."""
    return MappingProxyType({key: MappingProxyType(table) for key, table in tables.items()})

# The valid range of every numeric field, by dotted name (algorithm fields below).
RANGES: Mapping[str, Range] = MappingProxyType({
    "model.num_layers": _at_least(1),
    "model.hidden_size": _at_least(1),
    "model.ffn_hidden_size": _at_least(1),
    "model.num_attention_heads": _at_least(1),
    "model.num_query_groups": _at_least(1),
    "model.vocab_size": _at_least(1),
    "model.kv_channels": _at_least(1, nullable=True, note="null: hidden_size / num_attention_heads"),
    "model.max_position_embeddings": _at_least(1),
    "model.rotary_base": _above(0),
    "model.rope_scaling_factor": _above(0, nullable=True, note="null: no RoPE scaling"),
    "model.norm_epsilon": _above(0),
    "model.make_vocab_size_divisible_by": _at_least(1),
    "model.init_method_std": _above(0),
    "parallel.tensor_model_parallel_size": _at_least(1),
    "parallel.pipeline_model_parallel_size": _at_least(1),
    "parallel.context_parallel_size": _at_least(1, note="only 1 until context parallelism is implemented"),
    "parallel.world_size": _at_least(1, nullable=True, note="null: the launcher's WORLD_SIZE"),
    "parallel.timeout_minutes": _at_least(1),
    "train.seed": Range(0, 2**32 - 1, note="numpy's seed range"),
    "train.micro_batch_size": _at_least(1),
    "train.global_batch_size": _at_least(1),
    "train.seq_length": _at_least(1),
    "train.lr": _above(0),
    "train.min_lr": Range(0, "train.lr"),
    "train.weight_decay": _at_least(0),
    "train.adam_beta1": Range(0, 1, high_open=True),
    "train.adam_beta2": Range(0, 1, high_open=True),
    "train.adam_eps": _above(0),
    "train.clip_grad": _at_least(0, note="0: no clipping"),
    "train.lr_warmup_steps": _at_least(0),
    "train.lr_decay_steps": _at_least(1, nullable=True, note="null: the run's last step"),
    "train.total_steps": _at_least(1),
    "train.eval_every": _at_least(0, note="0: first and last step only"),
    "task.sampling.max_new_tokens": _at_least(1),
    "task.sampling.min_new_tokens": Range(0, "task.sampling.max_new_tokens"),
    "task.sampling.temperature": _at_least(0, note="0: greedy, which an RL run refuses"),
    "task.sampling.top_k": Range(0, "model.vocab_size", note="0: off"),
    "task.sampling.top_p": Range(0, 1, low_open=True, note="1: off"),
    "task.num_eval_prompts": _at_least(1),
    "task.pretrain_steps": _at_least(0),
    "task.pretrain_lr": _above(0),
    "task.pretrain_batch_size": _at_least(1),
    "task.graph_seed": Range(0, 2**32 - 1, note="numpy's seed range"),
    "task.eval_temperature": _above(0, nullable=True, note="null: task.sampling.temperature"),
    "data.eval_fraction": Range(0, 1, high_open=True, note="0: nothing held out"),
    "data.limit": _at_least(1, nullable=True, note="null: every row"),
    "data.max_length": Range(2, "train.seq_length", nullable=True, note="null: train.seq_length"),
    "checkpoint.save_every": _at_least(0, note="0: at the end only"),
    "checkpoint.keep_last": _at_least(1),
    "logging.num_samples": _at_least(0),
    "cluster.nodes": _at_least(1),
    "cluster.gpus_per_node": _at_least(1),
    "cluster.gpu_memory_gib": _above(0),
    "cluster.reserved_memory_gib": Range(0, "cluster.gpu_memory_gib", high_open=True),
    "cluster.cpus_per_task": _at_least(1, nullable=True, note="null: the cluster's default"),
    "cluster.master_port": Range(1, 65535),
    "rollout.generator_ranks": _at_least(0, note="0 with placement=colocated"),
    "rollout.generator_tensor_parallel_size": _at_least(1),
    "rollout.max_staleness": _at_least(0, note="0: on-policy"),
    "rollout.importance_clip": _at_least(1),
})

# Every algorithm's (under algorithm.); num_layers_unfrozen (-1 or >= 1) is checked with the other
# algorithm rules.
ALGORITHM_RANGES: Mapping[str, Range] = MappingProxyType({
    "prompts_per_step": _at_least(1),
    "samples_per_prompt": _at_least(1, note="at least 2 for online_dpo, rloo and grpo"),
    "epochs": _at_least(1),
    "minibatches": _at_least(1),
    "missing_eos_penalty": _at_least(0, nullable=True, note="null: no penalty"),
})

# Each algorithm's own (algorithm=<name>).
ALGORITHM_OWN_RANGES: Mapping[str, Mapping[str, Range]] = _frozen({
    "ppo": {"init_kl_coef": _at_least(0),
            "target_kl": _above(0, nullable=True, note="null for a fixed KL coefficient"),
            "kl_horizon": _at_least(1), "gamma": Range(0, 1), "lam": Range(0, 1),
            "clip_ratio": _above(0), "clip_value": _above(0), "vf_coef": _at_least(0),
            "entropy_coef": _at_least(0), "clip_reward": _above(0, nullable=True, note="null: no clipping"),
            "value_head_seed": _at_least(0)},
    "online_dpo": {"beta": _above(0)},
    "rloo": {"kl_coef": _at_least(0), "clip_ratio": _above(0)},
    "grpo": {"beta": _at_least(0, note="0: no KL term"), "clip_low": Range(0, 1, high_open=True),
             "clip_high": _above(0), "epsilon": _above(0)},
    "ilql": {"tau": Range(0, 1, low_open=True, high_open=True), "gamma": Range(0, 1),
             "cql_scale": _at_least(0), "awac_scale": _at_least(0), "awac_beta": _at_least(0),
             "alpha": Range(0, 1, low_open=True), "steps_for_target_q_sync": _at_least(1),
             "head_width": _at_least(1, nullable=True, note="null: model.hidden_size"),
             "head_seed": _at_least(0),
             "report_beta": _at_least(0, nullable=True, note="null: the best of algorithm.betas")},
    "sft": {"num_epochs": _above(0, nullable=True, note="null: train.total_steps")},
    "dpo": {"num_epochs": _above(0, nullable=True, note="null: train.total_steps"), "beta": _above(0),
            "label_smoothing": Range(0, 0.5, high_open=True, note="0: plain DPO"), "sft_weight": _at_least(0)},
})

# The valid values of every string field with a fixed set, by dotted name.
CHOICES: Mapping[str, Choices] = MappingProxyType({
    "model.params_dtype": Choices(DTYPES),
    "parallel.backend": Choices(("auto", "nccl", "gloo")),
    "train.optimizer": Choices(("adam", "sgd")),
    "train.lr_decay_style": Choices(("constant", "linear", "cosine")),
    "train.recompute": Choices((None, "selective", "full")),
    "task.name": Choices(("randomwalks", "sentiment", "custom"), note="task=randomwalks, task=sentiment"),
    "rollout.placement": Choices(("colocated", "split")),
    "rollout.old_logprobs": Choices(("proximal", "behaviour")),
    "rollout.generator_dtype": Choices((None, *DTYPES), note="null: model.params_dtype"),
})
ALGORITHM_CHOICES: Mapping[str, Choices] = MappingProxyType({"penalty_mode": Choices(("subtract", "replace"))})
ALGORITHM_OWN_CHOICES: Mapping[str, Mapping[str, Choices]] = _frozen({
    "ppo": {"scale_reward": Choices((None, "running"))},
    "online_dpo": {"loss_type": Choices(("sigmoid", "ipo"))},
    "grpo": {"loss_aggregation": Choices(("token", "sequence"))},
    "dpo": {"loss_type": Choices(("sigmoid", "ipo")), "reference": Choices(("precompute", "online"))},
})


def _rules(algorithm: Optional[str]) -> tuple[dict[str, Range], dict[str, Choices]]:
    """(ranges, choices) by dotted name for a config whose algorithm is ``algorithm`` (None: none)."""
    ranges, choices = dict(RANGES), dict(CHOICES)
    if algorithm is not None:
        ranges.update({f"algorithm.{k}": r for k, r in ALGORITHM_RANGES.items()})
        ranges.update({f"algorithm.{k}": r for k, r in ALGORITHM_OWN_RANGES.get(algorithm, {}).items()})
        choices.update({f"algorithm.{k}": c for k, c in ALGORITHM_CHOICES.items()})
        choices.update({f"algorithm.{k}": c for k, c in ALGORITHM_OWN_CHOICES.get(algorithm, {}).items()})
    return ranges, choices


def field_rule(name: str, algorithm: Optional[str] = None) -> Optional[Range | Choices]:
    """The range or the choices that validation holds the field ``name`` (dotted) to, if any."""
    ranges, choices = _rules(algorithm)
    return ranges.get(name) or choices.get(name)


# Fields the layout and batch rules divide by or compare: when one is out of range, those
# rules cannot run, so validation stops at the range problems.
_LAYOUT_INPUTS = {
    "model.num_layers", "model.hidden_size", "model.ffn_hidden_size", "model.num_attention_heads",
    "model.num_query_groups", "model.vocab_size", "model.make_vocab_size_divisible_by",
    "model.max_position_embeddings", "parallel.tensor_model_parallel_size",
    "parallel.pipeline_model_parallel_size", "parallel.context_parallel_size", "parallel.world_size",
    "train.micro_batch_size", "train.global_batch_size", "train.seq_length", "train.total_steps",
    "train.lr_warmup_steps", "train.lr_decay_steps", "algorithm.prompts_per_step", "algorithm.samples_per_prompt",
    "algorithm.epochs", "algorithm.minibatches", "task.pretrain_steps", "task.pretrain_batch_size",
    "rollout.generator_ranks", "rollout.generator_tensor_parallel_size",
}


def _lookup(values: dict, name: str) -> Any:
    for key in name.split("."):
        values = values[key]
    return values


def _range_problems(values: dict) -> dict[str, str]:
    """{dotted name: problem} for every numeric field outside its range (NaN included)."""
    ranges, _ = _rules(values["algorithm"] and values["algorithm"]["name"])
    return {name: f"{name}={_lookup(values, name)} is out of range: use a value {rng}"
            for name, rng in ranges.items() if not rng.holds(_lookup(values, name), values)}


def _choice_problems(values: dict) -> dict[str, str]:
    """{dotted name: problem} for every string field that is not one of its choices."""
    _, choices = _rules(values["algorithm"] and values["algorithm"]["name"])
    return {name: f"{name}={_lookup(values, name)!r}: use {c}"
            for name, c in choices.items() if not c.holds(_lookup(values, name))}


def _unknown_keys(schema: type, values: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Dotted names of keys in ``values`` that the dataclass ``schema`` does not declare
    (under ``algorithm``: the named algorithm's schema)."""
    fields = {f.name: f for f in dataclasses.fields(schema)}
    unknown = []
    for key, value in values.items():
        if prefix == "algorithm." and key in fields:
            continue
        if prefix == "algorithm." and key in RENAMED_OPTIONS:
            unknown.append(renamed_option_message(key))
            continue
        if prefix == "algorithm.":
            owners = [n for n, other in ALGORITHMS.items() if key in {f.name for f in dataclasses.fields(other)}]
            if owners:
                unknown.append(foreign_option_message(key, values.get("name"), owners))
                continue
        if key not in fields:
            close = [f for f in fields if f.startswith(str(key)[:3])]
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            unknown.append(
                f"unknown key '{prefix}{key}'{hint}: remove it; valid keys of "
                f"'{prefix.rstrip('.') or 'root'}' are {sorted(fields)}"
            )
            continue
        sub_schema = typing.get_type_hints(schema)[key]
        if prefix == "" and key == "algorithm" and isinstance(value, Mapping):
            sub_schema = ALGORITHMS.get(value.get("name"))
            if sub_schema is None:
                unknown.append(f"algorithm.name={value.get('name')!r} is unknown: use one of {sorted(ALGORITHMS)} "
                               f"(algorithm=<name>)")
                continue
        if isinstance(value, Mapping) and dataclasses.is_dataclass(sub_schema):
            unknown += _unknown_keys(sub_schema, value, f"{prefix}{key}.")
    return unknown


# Options renamed when every online algorithm came to share one batch shape: old name -> the new one.
RENAMED_OPTIONS = {"rollouts_per_step": "prompts_per_step (each prompt is sampled samples_per_prompt times)",
                   "ppo_epochs": "epochs"}


def renamed_option_message(key: str) -> str:
    return f"algorithm.{key} was renamed: use algorithm.{RENAMED_OPTIONS[key]}"


def foreign_option_message(key: str, algorithm: str | None, owners: list[str]) -> str:
    """The problem of ``algorithm.<key>`` set for an algorithm that does not have it."""
    names = [f"algorithm={o}" for o in owners]

    def listed(word: str) -> str:
        return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} {word} {names[-1]}"

    return f"algorithm.{key} is an option of {listed('and')}, not of algorithm={algorithm}: remove it, or pick {listed('or')}"


def foreign_option_problems(overrides: list[str]) -> list[str]:
    """Command-line overrides ``algorithm.<key>=...`` that name an option of another algorithm
    than the one ``algorithm=<name>`` selects. Hydra would reject them as unknown keys (and
    suggest adding them with '+'); this names the algorithm they belong to instead."""
    chosen = [o.split("=", 1)[1] for o in overrides if o.startswith("algorithm=")]
    own = {f.name for f in dataclasses.fields(ALGORITHMS[chosen[-1]])} if chosen and chosen[-1] in ALGORITHMS else None
    problems = []
    for override in overrides:
        if not override.lstrip("+~").startswith("algorithm.") or "=" not in override:
            continue
        key = override.lstrip("+~").split("=", 1)[0][len("algorithm."):]
        owners = [n for n, other in ALGORITHMS.items() if key in {f.name for f in dataclasses.fields(other)}]
        if key in RENAMED_OPTIONS:
            problems.append(renamed_option_message(key))
        elif own is not None and key not in own and owners:
            problems.append(foreign_option_message(key, chosen[-1], owners))
    return problems


def _launcher_world_size() -> Optional[int]:
    value = os.environ.get("WORLD_SIZE")
    return int(value) if value else None


def to_container(cfg: DictConfig | Mapping[str, Any] | RootConfig) -> dict[str, Any]:
    """Plain values of a config, for the rules below (which name fields by their dotted
    names) and for loggers; the run itself reads the typed objects (``typed_config``)."""
    if isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=True)
    if dataclasses.is_dataclass(cfg):
        return dataclasses.asdict(cfg)
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

    out_of_range = _range_problems(values)
    problems = list(out_of_range.values()) + list(_choice_problems(values).values())
    if _LAYOUT_INPUTS & out_of_range.keys():
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
    divisible_by, padded_vocab = m["make_vocab_size_divisible_by"], _padded_vocab(m)
    if padded_vocab % tp:
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
    if cp > 1:
        problems.append(f"parallel.context_parallel_size={cp}: context parallelism is not implemented yet; use 1")
    if t["seq_length"] > m["max_position_embeddings"]:
        problems.append(
            f"train.seq_length={t['seq_length']} exceeds model.max_position_embeddings="
            f"{m['max_position_embeddings']}: shorten the sequences")

    if p["use_distributed_optimizer"] and t["optimizer"] != "adam":
        problems.append(
            f"parallel.use_distributed_optimizer=true supports only train.optimizer=adam (got "
            f"{t['optimizer']!r}): switch to adam or disable the distributed optimizer")

    if values["algorithm"] is not None:
        problems += _algorithm_problems(values)
        a = values["algorithm"]
        width = a.get("head_width") or m["hidden_size"]
        if a["name"] == "ilql" and width % tp:
            problems.append(f"algorithm.head_width={width} (ILQL's heads; null: model.hidden_size) is not divisible by "
                            f"parallel.tensor_model_parallel_size={tp}, which splits it: use a multiple of {tp}")

    problems += _rollout_problems(values)

    launcher_world = _launcher_world_size()
    world = world_size or p["world_size"] or launcher_world
    if p["world_size"] and launcher_world and p["world_size"] != launcher_world:
        problems.append(
            f"parallel.world_size={p['world_size']} but the launcher started {launcher_world} "
            f"processes (WORLD_SIZE): make them agree (e.g. torchrun --nproc_per_node)")
    model_parallel = tp * pp * cp
    r = values["rollout"]
    generators = r["generator_ranks"] if r["placement"] == "split" else 0
    if world is not None and generators >= world:
        problems.append(
            f"rollout.generator_ranks={generators} leaves no learner in a world of {world} rank(s): "
            f"use at most {world - 1} generator ranks, or launch more processes")
    elif world is not None:
        learners = world - generators
        if learners % model_parallel:
            whose = (f"the learner ranks (world {world} - rollout.generator_ranks {generators} = {learners})"
                     if generators else f"world size {world}")
            problems.append(
                f"{whose} {'are' if generators else 'is'} not divisible by parallel.tensor_model_parallel_size x "
                f"pipeline_model_parallel_size x context_parallel_size = {tp} x {pp} x {cp} = "
                f"{model_parallel}: launch a multiple of {model_parallel} "
                f"{'learner ranks' if generators else 'processes'} or shrink the layout")
        else:
            dp = learners // model_parallel
            step = t["micro_batch_size"] * dp
            a = values["algorithm"]
            if a and a["name"] not in OFFLINE_ALGORITHMS:
                problems += _batch_problems(a, t["micro_batch_size"], dp)
            pretrain_batch = values["task"]["pretrain_batch_size"]
            if _pretrains(values) and pretrain_batch % dp:
                problems.append(
                    f"task.pretrain_batch_size={pretrain_batch} is not divisible by the data-parallel size "
                    f"{dp}: use a multiple of {dp} (e.g. {pretrain_batch - pretrain_batch % dp or dp})")
            if a and a["name"] == "dpo":
                if 2 * t["global_batch_size"] % step:
                    problems.append(
                        f"algorithm=dpo: train.global_batch_size={t['global_batch_size']} pairs are "
                        f"{2 * t['global_batch_size']} sequences, which train.micro_batch_size x data-parallel size "
                        f"= {t['micro_batch_size']} x {dp} = {step} does not divide: use a number of pairs whose "
                        f"double is a multiple of {step}")
            elif (not a or a["name"] in OFFLINE_ALGORITHMS) and t["global_batch_size"] % step:
                problems.append(
                    f"train.global_batch_size={t['global_batch_size']} is not divisible by "
                    f"train.micro_batch_size x data-parallel size = {t['micro_batch_size']} x "
                    f"{dp} = {step}: use a global batch that is a multiple of {step}")
    if problems:
        raise ConfigError(problems)


def _padded_vocab(m: dict) -> int:
    """The vocabulary padded to model.make_vocab_size_divisible_by (models.gpt.padded_vocab_size)."""
    divisible_by = m["make_vocab_size_divisible_by"]
    return -(-m["vocab_size"] // divisible_by) * divisible_by


def _rollout_problems(values: dict) -> list[str]:
    """Rules of the rollout placement (world-independent; the world's share is checked with the layout)."""
    r, m, a = values["rollout"], values["model"], values["algorithm"]
    problems = []
    if not CHOICES["rollout.placement"].holds(r["placement"]):
        return problems  # reported with the other choices
    if r["placement"] == "colocated":
        if r["generator_ranks"]:
            problems.append(f"rollout.generator_ranks={r['generator_ranks']} needs rollout.placement=split "
                            f"(colocated ranks all generate and learn): set placement=split or generator_ranks=0")
        if r["max_staleness"]:
            problems.append(f"rollout.max_staleness={r['max_staleness']} needs rollout.placement=split: colocated "
                            f"ranks cannot generate while they learn (for off-policy updates in one step use "
                            f"algorithm.minibatches)")
        return problems
    g, gen_tp = r["generator_ranks"], r["generator_tensor_parallel_size"]
    if g < 1:
        problems.append("rollout.placement=split needs rollout.generator_ranks >= 1 (the ranks that only generate)")
    elif g % gen_tp:
        problems.append(f"rollout.generator_ranks={g} is not divisible by rollout.generator_tensor_parallel_size="
                        f"{gen_tp}: each generator replica takes {gen_tp} ranks")
    elif a is not None and a["prompts_per_step"] % (g // gen_tp):
        problems.append(f"algorithm.prompts_per_step={a['prompts_per_step']} is not divisible by the {g // gen_tp} "
                        f"generator replicas (rollout.generator_ranks / generator_tensor_parallel_size): each "
                        f"replica samples an equal share of a step's prompts")
    heads, groups, padded_vocab = m["num_attention_heads"], m["num_query_groups"], _padded_vocab(m)
    for name, size in (("model.num_attention_heads", heads), ("model.num_query_groups", groups),
                       ("model.ffn_hidden_size", m["ffn_hidden_size"]), ("the padded vocabulary", padded_vocab)):
        if size % gen_tp:
            problems.append(f"rollout.generator_tensor_parallel_size={gen_tp} does not divide {name}={size}: "
                            f"use one of {_divisors(math.gcd(heads, groups, m['ffn_hidden_size'], padded_vocab))}")
    if a is None:
        problems.append("rollout.placement=split runs an RL algorithm's generation apart from its learning: "
                        "choose an online algorithm (algorithm=online_dpo|ppo|rloo|grpo)")
    elif a["name"] in OFFLINE_ALGORITHMS:
        problems.append(f"rollout.placement=split does not apply to algorithm={a['name']} (offline: it samples "
                        f"nothing while it learns): use rollout.placement=colocated")
    elif a["name"] != "online_dpo" and (r["importance_correction"] or r["old_logprobs"] == "behaviour"):
        sampling = values["task"]["sampling"]
        filters = [f"task.sampling.{key}={sampling[key]}" for key, off in (("top_k", 0), ("top_p", 1.0),
                                                                           ("min_new_tokens", 0))
                   if sampling[key] != off]
        if filters:
            problems.append(
                f"rollout.placement=split with {', '.join(filters)}: the generator's log-probs are of the filtered "
                f"distribution it sampled, the learner's of the tempered one, so importance weights or "
                f"old_logprobs=behaviour would compare two different distributions; drop the filter, or set "
                f"rollout.importance_correction=false with rollout.old_logprobs=proximal")
    return problems


def _algorithm_problems(values: dict) -> list[str]:
    """Rules of an RL run (algorithm, task sections) beyond the numeric ranges."""
    a, t, task, m = values["algorithm"], values["train"], values["task"], values["model"]
    problems = []
    name = a["name"]
    if name in OFFLINE_ALGORITHMS:
        problems += _offline_problems(a)
    if name == "ilql":
        problems += _ilql_problems(a)
    if name in SUPERVISED_ALGORITHMS:
        problems += _supervised_problems(values)
    if name == "ilql" and values["data"]["path"] is not None:
        problems.append(f"data.path={values['data']['path']} does not feed algorithm=ilql: its offline data come from "
                        f"task.dataset (JSONL rows {{\"prompt\", \"output\", \"reward\"}}); set that instead")
    if values["data"]["pack"] and name != "sft":
        problems.append(f"data.pack=true applies to algorithm=sft (samples packed into rows), not to algorithm={name}: "
                        f"set data.pack=false")
    if name in ("online_dpo", "rloo", "grpo") and a["samples_per_prompt"] < 2:
        problems.append(f"algorithm={name} compares the samples of a prompt: algorithm.samples_per_prompt="
                        f"{a['samples_per_prompt']} must be at least 2")
    if a["num_layers_unfrozen"] < -1 or a["num_layers_unfrozen"] == 0:
        problems.append(f"algorithm.num_layers_unfrozen={a['num_layers_unfrozen']}: use -1 (train all "
                        f"layers) or 1..{m['num_layers']} (train the top layers, share the frozen trunk)")
    if task["sampling"]["temperature"] == 0 and name not in SUPERVISED_ALGORITHMS:
        problems.append("task.sampling.temperature=0 samples greedily: an RL run needs samples that differ; "
                        "use a temperature > 0 (evaluations decode greedily with task.eval_greedy=true)")
    if not task["eval_greedy"] and not task["eval_seeds"]:
        problems.append("task.eval_greedy=false with no task.eval_seeds evaluates nothing: set one of them")
    decay_steps = t["lr_decay_steps"] or t["total_steps"] * a["epochs"] * a["minibatches"]
    # with algorithm.num_epochs the run's steps are known once the data are (jobs.with_epochs checks it then)
    if t["lr_warmup_steps"] >= decay_steps and a.get("num_epochs") is None:  # Megatron's scheduler asserts warm-up < decay
        decay = (f"train.lr_decay_steps={decay_steps}" if t["lr_decay_steps"] else
                 f"the run's {decay_steps} optimizer steps (total_steps x epochs x minibatches)")
        problems.append(f"train.lr_warmup_steps={t['lr_warmup_steps']} must be below {decay}: shorten the "
                        f"warm-up or lengthen the decay")
    return problems


# Online fields that an offline algorithm has no use for: set, they would mislead.
ONLINE_ONLY = ("prompts_per_step", "samples_per_prompt", "epochs", "minibatches", "missing_eos_penalty",
                "penalty_mode", "offload_reference")


def _offline_problems(a: dict) -> list[str]:
    defaults = AlgorithmConfig()
    online_reference = a["name"] == "dpo" and a["reference"] == "online"
    problems = []
    for key in ONLINE_ONLY:
        if a[key] == getattr(defaults, key) or (key == "offload_reference" and online_reference):
            continue
        if key == "offload_reference" and a["name"] == "dpo":
            problems.append("algorithm.offload_reference=true applies with algorithm.reference=online (a precomputed "
                            "reference has no model to offload): set reference=online or remove it")
            continue
        problems.append(f"algorithm.{key}={a[key]!r} does not apply to algorithm={a['name']} (offline: each of "
                        f"train.total_steps optimizer steps trains on train.global_batch_size dataset rows): "
                        f"remove it")
    return problems


def _supervised_problems(values: dict) -> list[str]:
    """Rules of SFT and offline DPO beyond the numeric ranges (data.path is checked as the data load)."""
    a, d, t = values["algorithm"], values["data"], values["train"]
    problems = []
    if a["name"] == "dpo":
        if a["loss_type"] == "ipo" and a["label_smoothing"]:
            problems.append(f"algorithm.label_smoothing={a['label_smoothing']} applies to loss_type=sigmoid (cDPO) "
                            f"only: set it to 0 with loss_type=ipo")
        if t["micro_batch_size"] % 2:
            problems.append(f"algorithm=dpo trains on (chosen, rejected) pairs, which a micro-batch must hold whole: "
                            f"train.micro_batch_size={t['micro_batch_size']} must be even")
    return problems


def _ilql_problems(a: dict) -> list[str]:
    problems = []
    betas = a["betas"]
    if not betas or any(not _at_least(0).holds(b) for b in betas):
        problems.append(f"algorithm.betas={betas}: give one or more decoding strengths >= 0 (0: the policy alone)")
    elif a["report_beta"] is not None and a["report_beta"] not in betas:
        problems.append(f"algorithm.report_beta={a['report_beta']} is not one of algorithm.betas={betas}: "
                        f"add it there or pick one of them")
    return problems


def learner_rows_per_prompt(algorithm: str, samples_per_prompt: int) -> int:
    """Rows of the learner batch per prompt: online DPO keeps a chosen and a rejected one."""
    return 2 if algorithm == "online_dpo" else samples_per_prompt


def _batch_problems(a: dict, micro_batch_size: int, dp: int) -> list[str]:
    """A step's prompts split into equal whole-prompt shares: DP ranks x minibatches; each
    share's learner rows (and each rank's rollouts) in whole micro-batches; online DPO's
    pairs never split across micro-batches."""
    prompts, k, minibatches = a["prompts_per_step"], a["samples_per_prompt"], a["minibatches"]
    problems = []
    shares = dp * minibatches
    if prompts % shares:
        problems.append(
            f"algorithm.prompts_per_step={prompts} is not divisible by the data-parallel size x "
            f"algorithm.minibatches = {dp} x {minibatches} = {shares}: the samples of a prompt stay on one "
            f"rank and in one minibatch; use a multiple of {shares}")
        return problems
    per_prompt = learner_rows_per_prompt(a["name"], k)
    rows = prompts // shares * per_prompt
    # every sample goes through the experience forwards, except online DPO's (only its pairs do)
    rollouts = prompts // dp * (per_prompt if a["name"] == "online_dpo" else k)
    if rows % micro_batch_size or rollouts % micro_batch_size:
        problems.append(
            f"algorithm.prompts_per_step={prompts} gives each data-parallel rank {rollouts} samples and each of "
            f"its {minibatches} minibatches {rows} learner rows (prompts_per_step / (DP {dp} x minibatches "
            f"{minibatches}) x {per_prompt}), which train.micro_batch_size={micro_batch_size} "
            f"does not divide: use a micro-batch size that divides {math.gcd(rows, rollouts)}, or more prompts per step")
    if a["name"] == "online_dpo" and micro_batch_size % 2:
        problems.append(f"algorithm=online_dpo trains on (chosen, rejected) pairs, which a micro-batch must hold "
                        f"whole: train.micro_batch_size={micro_batch_size} must be even")
    return problems


def _pretrains(values: dict) -> bool:
    """Whether the run pretrains the randomwalks policy (tasks.py) before RL."""
    task = values["task"]
    return (values["algorithm"] is not None and task["name"] == "randomwalks" and task["pretrain_steps"] > 0
            and not values["model"]["hf_checkpoint"])
