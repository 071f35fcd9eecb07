"""autorlhf_nemo: RLHF (PPO, online DPO, RLOO, GRPO; offline ILQL) on Megatron-core."""

from __future__ import annotations

from typing import Callable, Sequence

__version__ = "0.1.0"


def silence_expected_noise() -> None:
    """Hide the start-up messages every CPU run printed to every user, and nothing else:
    megatron-core's notices that the optional GPU libraries (Transformer Engine, apex) are
    absent, its deprecation warning tripped by its own default ``cuda_graph_scope``, and the
    telemetry logger NeMo brings (nv_one_logger) saying it has no exporters, and megatron-core
    0.19's notice, logged by every GPTModel built, that GPTModel takes bug fixes only (its
    successor, HybridModel, is not in 0.16; the notice is dropped by its text). Runs on import
    of this package, so in every process before megatron or NeMo is imported."""
    import logging
    import warnings

    warnings.filterwarnings("ignore", message=r"(Transformer Engine and Apex are|Apex is) not installed",
                            category=UserWarning, module=r"megatron\.core")
    warnings.filterwarnings("ignore", message="full scope is deprecated", category=UserWarning,
                            module=r"megatron\.core\.transformer\.transformer_config")
    logging.getLogger("nv_one_logger").setLevel(logging.ERROR)
    logging.getLogger("megatron.core.models.gpt.gpt_model").addFilter(
        lambda record: "GPTModel IS DEPRECATED" not in record.getMessage())


silence_expected_noise()


def train(overrides: Sequence[str] = (), *, reward_fn: Callable | None = None,
          prompts: Sequence[str] | None = None, eval_prompts: Sequence[str] | None = None,
          samples: Sequence | None = None, rewards: Sequence[float] | None = None, dataset=None) -> dict:
    """Run RL from Python, as ``python -m autorlhf_nemo <overrides>`` would.

    With ``reward_fn(samples, prompts, outputs, **metadata) -> list[float]`` (or
    per-token lists) and ``prompts`` the task is ``custom`` (conf/task/custom.yaml:
    settings that keep a step of a small model cheap; your overrides and a recipe's
    settings win); ``algorithm`` defaults to ppo (``algorithm=online_dpo|rloo|grpo``). Without ``eval_prompts`` the
    evaluations use the first ``task.num_eval_prompts`` training prompts (the report
    says so). Call it in every process under torchrun, or in a plain process for a
    single-rank run. Returns {"before", "after", "history"} (evaluations and
    per-step metrics; complete on global rank 0), and None on the generator ranks of a
    split placement (``rollout.placement=split``).

        autorlhf_nemo.train(["model=smollm2_135m", "train.total_steps=20"],
                            reward_fn=lambda samples, **_: [len(s) / 100 for s in samples],
                            prompts=["Tell me a joke.", "Describe the sea."])

    Offline (ILQL, the default algorithm then): ``samples`` (strings, or alternating
    [prompt, output, ...] segments) and their ``rewards``; ``reward_fn``, optional, scores
    the evaluations of ``eval_prompts`` (default: the samples' prompts).

        autorlhf_nemo.train(["model=smollm2_135m"], samples=[["Hi", " Hello!"], ["Hi", " Go away."]],
                            rewards=[1.0, -1.0], eval_prompts=["Hello there"])

    Supervised (``algorithm=sft`` or ``algorithm=dpo``, SmolLM2-135M-Instruct by default): a
    ``dataset``, a file path or a ``datasets.Dataset`` (docs/data.md), instead of data.path;
    ``reward_fn`` and ``eval_prompts``, optional, score decoded completions at each evaluation.

        autorlhf_nemo.train(["algorithm=dpo"], dataset="pairs.jsonl")
    """
    from autorlhf_nemo.config.compose import compose_config
    from autorlhf_nemo.config.validate import ConfigError, foreign_option_problems, validate_config
    from autorlhf_nemo.jobs import run_rl

    overrides = list(overrides)
    offline = samples is not None or rewards is not None
    if not any(o.startswith("algorithm=") for o in overrides):
        if dataset is not None:
            raise ConfigError(["a dataset trains algorithm=sft or algorithm=dpo: name one, e.g. "
                               "autorlhf_nemo.train(['algorithm=sft'], dataset=...)"])
        overrides.insert(0, "algorithm=ilql" if offline else "algorithm=ppo")
    problems = foreign_option_problems(overrides)
    if problems:
        raise ConfigError(problems)
    if (reward_fn is not None or offline) and not any(o.startswith(("task=", "task.name=")) for o in overrides):
        # The group sets the custom task's defaults; the name also beats a recipe's placeholder task.
        overrides += ["task=custom", "task.name=custom"]
    cfg = compose_config(overrides)
    validate_config(cfg)  # a ConfigError in seconds, before torch and megatron load
    return run_rl(cfg, prompts=prompts, reward_fn=reward_fn, eval_prompts=eval_prompts, samples=samples,
                  rewards=rewards, dataset=dataset)
