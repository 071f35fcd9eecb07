"""autorlhf_nemo: RLHF (PPO, ILQL, online DPO, RLOO) on Megatron-core."""

from __future__ import annotations

from typing import Callable, Sequence

__version__ = "0.1.0"


def train(overrides: Sequence[str] = (), *, reward_fn: Callable | None = None,
          prompts: Sequence[str] | None = None, eval_prompts: Sequence[str] | None = None) -> dict:
    """Run RL from Python, as ``python -m autorlhf_nemo <overrides>`` would.

    With ``reward_fn(samples, prompts, outputs, **metadata) -> list[float]`` (or
    per-token lists) and ``prompts`` the task is ``custom``; ``algorithm`` defaults
    to ppo. Call it in every process under torchrun, or in a plain process for a
    single-rank run. Returns {"before", "after", "history"} (evaluations and
    per-step metrics; complete on global rank 0).

        autorlhf_nemo.train(["model=smollm2_135m", "train.total_steps=20"],
                            reward_fn=lambda samples, **_: [len(s) / 100 for s in samples],
                            prompts=["Tell me a joke.", "Describe the sea."])
    """
    from autorlhf_nemo.config.compose import compose_config
    from autorlhf_nemo.jobs import run_rl

    overrides = list(overrides)
    if not any(o.startswith("algorithm=") for o in overrides):
        overrides.insert(0, "algorithm=ppo")
    if reward_fn is not None and not any(o.startswith(("task=", "task.name=")) for o in overrides):
        overrides.append("task.name=custom")
    return run_rl(compose_config(overrides), prompts=prompts, reward_fn=reward_fn, eval_prompts=eval_prompts)
