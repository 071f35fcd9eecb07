"""Calling a user's reward function, once per data-parallel replica.

Protocol (trlX's)::

    reward_fn(samples: list[str], prompts: list[str], outputs: list[str], **metadata)
        -> list[float]              one score per sample, or
        -> list[list[float]]        one score per response token (dense rewards)

``samples`` are prompt + output texts. ``metadata`` holds per-sample lists
(e.g. a task's reference answers), sliced like the prompts.

Only one rank of each model-parallel group (its first) calls the function;
the scores, or the error, go to the other TP/PP ranks by broadcast, so a slow
or stateful reward runs once per replica and every rank fails alike.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
import torch.distributed as dist


class RewardFunctionError(ValueError):
    """The reward function raised, or returned something PPO cannot use."""


def _check(result, samples, response_lengths) -> list:
    if isinstance(result, torch.Tensor):
        result = result.tolist()
    if not isinstance(result, (list, tuple)):
        raise RewardFunctionError(f"reward_fn must return a list of floats (one per sample), "
                                  f"got {type(result).__name__}")
    if len(result) != len(samples):
        raise RewardFunctionError(f"reward_fn returned {len(result)} scores for {len(samples)} samples: "
                                  f"return exactly one score (or one list of per-token scores) per sample")
    checked = []
    for i, value in enumerate(result):
        values = list(value) if isinstance(value, (list, tuple, torch.Tensor)) else [value]
        if isinstance(value, (list, tuple, torch.Tensor)) and response_lengths is not None \
                and len(values) != response_lengths[i]:
            raise RewardFunctionError(f"reward_fn returned {len(values)} per-token scores for sample {i} "
                                      f"whose response has {response_lengths[i]} tokens: {samples[i]!r}")
        for v in values:
            try:
                v = float(v)
            except (TypeError, ValueError):
                raise RewardFunctionError(f"reward_fn returned {v!r} for sample {i}, not a number: "
                                          f"{samples[i]!r}") from None
            if not math.isfinite(v):
                raise RewardFunctionError(f"reward_fn returned {v} for sample {i}; scores must be finite "
                                          f"(no NaN or inf): {samples[i]!r}")
        checked.append([float(v) for v in values] if isinstance(value, (list, tuple, torch.Tensor))
                       else float(value))
    return checked


def _call(reward_fn: Callable, samples, prompts, outputs, metadata, response_lengths) -> list:
    try:
        result = reward_fn(samples=list(samples), prompts=list(prompts), outputs=list(outputs), **metadata)
    except Exception as batch_error:  # find the sample that breaks it, for the message
        for i in range(len(samples)):
            try:
                reward_fn(samples=[samples[i]], prompts=[prompts[i]], outputs=[outputs[i]],
                          **{k: [v[i]] for k, v in metadata.items()})
            except Exception as error:
                raise RewardFunctionError(f"reward_fn raised {type(error).__name__}: {error} "
                                          f"on sample {i}: {samples[i]!r}") from error
        raise RewardFunctionError(f"reward_fn raised {type(batch_error).__name__}: {batch_error} "
                                  f"on the batch of {len(samples)} samples (each alone scores)") from batch_error
    return _check(result, samples, response_lengths)


def score(reward_fn: Callable, samples: Sequence[str], prompts: Sequence[str], outputs: Sequence[str],
          metadata: dict | None = None, response_lengths: Sequence[int] | None = None,
          group=None) -> list:
    """Scores of this replica's samples: floats, or per-token lists.

    ``group``: this replica's model-parallel group (TP x PP); its first rank
    calls ``reward_fn``, the others receive the result. None: call here."""
    metadata = metadata or {}
    for key, values in metadata.items():
        if len(values) != len(samples):
            raise ValueError(f"metadata {key!r} has {len(values)} entries for {len(samples)} samples")
    if group is None or dist.get_world_size(group) == 1:
        return _call(reward_fn, samples, prompts, outputs, metadata, response_lengths)
    src = dist.get_global_rank(group, 0)
    box = [None]
    if dist.get_rank() == src:
        try:
            box[0] = ("ok", _call(reward_fn, samples, prompts, outputs, metadata, response_lengths))
        except RewardFunctionError as error:
            box[0] = ("error", str(error))
    dist.broadcast_object_list(box, src=src, group=group)
    status, payload = box[0]
    if status == "error":
        raise RewardFunctionError(payload)
    return payload
