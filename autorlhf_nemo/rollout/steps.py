"""What a step samples, the same wherever it is sampled: colocated learners and split
generators draw the same prompts with the same seeds for step t.

    prompts      algorithm.prompts_per_step indices into the task's prompts, drawn from a
                 stream seeded by (train.seed, t) alone: a generator that runs ahead of the
                 learner, or a resumed run, draws them without the learner's RNG state
    rows         prompt i's sample j (global indices) is row i * k + j of the step, and decodes
                 with that row's seed, so a sample does not depend on which rank or replica draws it
    shares       a rank (DP rank, or generator replica) takes a contiguous equal share

Staleness schedule of a split run that starts (or resumes) at step s with max_staleness S
(version v: the policy after v learner steps; the generators start with version s):
    the generators receive version t - S before they sample step t, for t >= s + S + 1;
    the learner sends version v after its step v - 1, for v + S < train.total_steps.
So step t's samples come from version max(s, t - S): staleness <= S, and 0 at a (re)start.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from autorlhf_nemo.generation import SamplingParams


def step_prompts(seed: int, step: int, num_prompts: int, count: int) -> list[int]:
    """``count`` prompt indices in [0, num_prompts) for step ``step`` (with replacement)."""
    stream_seed = int(np.random.SeedSequence([seed, step]).generate_state(1)[0])
    return torch.randint(num_prompts, (count,), generator=torch.Generator().manual_seed(stream_seed)).tolist()


def share(items: list, index: int, parts: int) -> list:
    """Part ``index`` of ``parts`` contiguous equal parts of ``items``."""
    per_part = len(items) // parts
    return items[index * per_part:(index + 1) * per_part]


def global_rows(prompt_indices: list[int], samples_per_prompt: int) -> list[int]:
    """The step's row of each sample of these prompts (global prompt index i, sample j -> i * k + j),
    which is also its decode seed."""
    return [i * samples_per_prompt + j for i in prompt_indices for j in range(samples_per_prompt)]


def sampling_params(cfg, eos_token_ids, seed: int, seeds_of_rows, greedy: bool = False,
                    temperature: float | None = None) -> SamplingParams:
    """task.sampling as SamplingParams, with the step's seed and each row's seed."""
    sampling = dataclasses.asdict(cfg.task.sampling)
    if temperature is not None:
        sampling["temperature"] = temperature
    return SamplingParams(**sampling, greedy=greedy, eos_token_ids=eos_token_ids, seed=seed,
                          row_seeds=seeds_of_rows)


def generators_receive_before(step: int, start: int, max_staleness: int) -> bool:
    """Whether the generators take a new policy version (step - S) before sampling ``step``."""
    return step - max_staleness >= start + 1


def learner_sends_after(steps_done: int, max_staleness: int, total_steps: int) -> bool:
    """Whether the learner sends version ``steps_done`` (its policy after that many steps)."""
    return steps_done + max_staleness < total_steps
