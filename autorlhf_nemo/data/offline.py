"""ILQL's offline dataset: fixed samples with scalar rewards, in trlX's shape.

A sample is a string (the output alone; its prompt is the start token) or a list of
alternating segments ``[prompt, output, prompt, output, ...]``. Each segment is
encoded separately and the tokens concatenated (trlX's ``tokenize_dialogue``); the
tokens of the output segments are the actions, and EOS is appended to the last
output, so ending the sample is an action too. The reward, z-scored over the dataset
by default (trlX's ILQL ``make_experience``), is the return of the last action.

Rows that cannot train (an empty output, an empty first prompt, a missing or
non-finite reward, more than ``train.seq_length`` tokens) raise
:class:`OfflineDataError`, or are dropped and counted with ``drop_bad_rows``. Unlike
trlX, a long sample is never truncated: cutting its prompt silently changes what the
reward was given for.

Datasets (:func:`read_rows`, through data/loader.py: JSONL, JSON, parquet, CSV, a datasets
directory or hub name, a ``datasets.Dataset``), e.g. JSONL with one object per line (blank lines
skipped):

    {"prompt": "Review of The Silent Harbor:", "output": " A quiet gem.", "reward": 0.8}
    {"prompt": "", "output": "An output with no prompt.", "reward": -1.5}

``prompt`` (string, may be ``""``: the output alone, after the start token),
``output`` (string) and ``reward`` (a number; ``null``, missing, ``NaN`` or ``Infinity``
make a bad row) are required columns; other columns are ignored. Text is not stripped: a
separating space belongs where the tokenizer expects it (usually the output's start).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

REASONS = ("empty_prompt", "empty_output", "bad_reward", "too_long")
_DROP = "set algorithm.drop_bad_rows=true to drop such rows"


class OfflineDataError(ValueError):
    """A sample or a JSONL line that cannot train; the message names it and the fix."""


@dataclass
class OfflineRow:
    tokens: list[int]    # the whole sample's token ids
    actions: list[int]   # indices into tokens of the action (output) tokens, ascending, all >= 1
    reward: float        # the (normalized) return, placed on the last action


@dataclass
class OfflineDataset:
    rows: list[OfflineRow]
    dropped: dict[str, int]   # reason (REASONS) -> rows dropped for it
    reward_mean: float        # of the raw rewards kept (before normalization)
    reward_std: float         # unbiased; 0 for one row or all-equal rewards


class SourceSamples(list):
    """The samples of a dataset source: a list that remembers where each sample came from, so that
    :func:`tokenize_samples` names the row (and line) of a bad one (a slice is a plain list)."""

    def __init__(self, samples, places):
        super().__init__(samples)
        self.places = list(places)


_ROW_SHAPE = '{"prompt": str, "output": str, "reward": number}'


def read_rows(source) -> tuple[list, list]:
    """(samples, rewards) of a dataset of ``{"prompt", "output", "reward"}`` rows, through the one
    loader (data/loader.py: a JSONL/JSON/parquet/CSV file, a datasets directory or hub name, or a
    ``datasets.Dataset``; format in the module docstring). A sample is ``[prompt, output]``, or the
    output string when the prompt is ``""``; a reward is a float (NaN / inf kept) or None (null or
    missing). Raises OfflineDataError naming the source and row (and line) of a malformed one."""
    from autorlhf_nemo.data.loader import DataError, load_table

    name = "<datasets.Dataset>" if not isinstance(source, (str, bytes)) and not hasattr(source, "__fspath__") \
        else str(source)
    try:
        table = load_table(source)
    except DataError as error:
        raise OfflineDataError(str(error)) from None
    missing = [key for key in ("prompt", "output", "reward") if key not in table.rows.column_names]
    if missing:
        raise OfflineDataError(f"{name}: no {', '.join(repr(k) for k in missing)} column (has "
                               f"{table.rows.column_names}): each row is {_ROW_SHAPE}; the prompt may be \"\"")
    samples, rewards, places = [], [], []
    for index, row in enumerate(table.rows):
        where = table.where(name, index)
        for key in ("prompt", "output"):
            if not isinstance(row[key], str):
                raise OfflineDataError(f'{where}: "{key}" is a {type(row[key]).__name__}, not a string: each row is '
                                       f'{_ROW_SHAPE}')
        reward = row["reward"]
        if reward is not None and (isinstance(reward, bool) or not isinstance(reward, (int, float))):
            raise OfflineDataError(f'{where}: "reward" is {reward!r}, not a number')
        samples.append([row["prompt"], row["output"]] if row["prompt"] else row["output"])
        rewards.append(None if reward is None else float(reward))
        places.append(where)
    if not samples:
        raise OfflineDataError(f"{name}: no rows")
    return SourceSamples(samples, places), rewards


def tokenize_samples(samples: Sequence, rewards: Sequence, encode: Callable[[str], list[int]], eos_token_id: int,
                     start_token_id: int, seq_length: int, reward_normalization: bool = True,
                     drop_bad_rows: bool = False, encode_output: Callable[[str], list[int]] | None = None
                     ) -> OfflineDataset:
    """Encode the samples into rows (module docstring), prompts with ``encode`` (e.g. in a chat
    template) and outputs with ``encode_output`` (default ``encode``); z-score the kept rewards when
    ``reward_normalization``: (r - mean) / (std + eps), unbiased std, float64 as trlX
    (all-equal rewards, or one row: 0). Bad rows raise :class:`OfflineDataError` naming
    the first, or with ``drop_bad_rows`` are dropped and counted in ``dropped``."""
    if len(samples) != len(rewards):
        raise OfflineDataError(f"{len(samples)} samples but {len(rewards)} rewards: give one reward per sample")
    places = getattr(samples, "places", None)
    if places is not None and len(places) != len(samples):
        places = None

    def name(i):
        return f"sample {i} ({places[i]})" if places is not None else f"sample {i}"

    rows, raw, dropped = [], [], dict.fromkeys(REASONS, 0)
    for i, (sample, reward) in enumerate(zip(samples, rewards)):
        tokens, actions, bad = _encode(sample, encode, encode_output or encode, eos_token_id, start_token_id,
                                       lambda: name(i))
        value = _finite(reward)
        if bad is None and value is None:
            bad = ("bad_reward", f"its reward {reward!r} is not a finite number: fix or remove it, or {_DROP}")
        if bad is None and len(tokens) > seq_length:
            bad = ("too_long", f"its tokens ({len(tokens)}) exceed train.seq_length={seq_length}: "
                               f"raise train.seq_length or {_DROP}")
        if bad is not None:
            if not drop_bad_rows:
                raise OfflineDataError(f"{name(i)}: {bad[1]}")
            dropped[bad[0]] += 1
            continue
        rows.append(OfflineRow(tokens, actions, value))
        raw.append(value)
    if not rows:
        counts = ", ".join(f"{k}: {v}" for k, v in dropped.items() if v)
        raise OfflineDataError(f"no sample is left of {len(samples)} ({counts or 'none given'}): fix the data")

    returns = torch.tensor(raw, dtype=torch.float64)
    mean = returns.mean().item()
    constant = bool((returns == returns[0]).all())
    std = 0.0 if constant else returns.std().item()
    if reward_normalization:
        # all-equal rewards: exactly 0 (trlX's formula gives rounding noise / eps there)
        normed = torch.zeros_like(returns) if constant else \
            (returns - mean) / (std + torch.finfo(torch.float64).eps)
        for row, r in zip(rows, normed.tolist()):
            row.reward = r
    return OfflineDataset(rows, dropped, mean, std)


def _encode(sample, encode, encode_output, eos_token_id, start_token_id, name):
    """(tokens, actions, None) or (tokens, actions, (reason, message)) for a bad row;
    a malformed sample (not a string or an even list of strings) raises whatever the flag."""
    if isinstance(sample, str):
        segments = [[start_token_id], list(encode_output(sample))]
    elif isinstance(sample, (list, tuple)) and sample and len(sample) % 2 == 0 \
            and all(isinstance(s, str) for s in sample):
        segments = [list((encode_output if k % 2 else encode)(s)) for k, s in enumerate(sample)]
    else:
        raise OfflineDataError(f"{name()}: a sample is a string (the output) or a list of strings alternating "
                               f"[prompt, output, ...] with an even length; got {_describe(sample)}")
    empty = [k for k in range(1, len(segments), 2) if not segments[k]]
    if not segments[0]:
        bad = ("empty_prompt", "its first prompt encodes to no tokens, so nothing precedes its first action: give "
                               f"it a prompt, pass the output alone as a string (prompt = start token), or {_DROP}")
    elif empty:
        bad = ("empty_output", f"its output segment {empty[0] // 2} encodes to no tokens: give it text or {_DROP}")
    else:
        bad = None
    if not segments[-1] or segments[-1][-1] != eos_token_id:
        segments[-1].append(eos_token_id)
    tokens, actions = [], []
    for k, seg in enumerate(segments):
        if k % 2:
            actions.extend(range(len(tokens), len(tokens) + len(seg)))
        tokens.extend(int(t) for t in seg)
    return tokens, actions, bad


def _finite(reward) -> float | None:
    """The reward as a float, or None when it is missing, not a number, NaN or infinite."""
    if isinstance(reward, torch.Tensor) and reward.numel() == 1:
        reward = reward.item()
    if reward is None or isinstance(reward, bool) or not isinstance(reward, numbers.Real):
        return None
    reward = float(reward)
    return reward if math.isfinite(reward) else None


def _describe(sample) -> str:
    if isinstance(sample, (list, tuple)):
        kinds = sorted({type(s).__name__ for s in sample})
        return f"a {type(sample).__name__} of {len(sample)} ({', '.join(kinds) or 'empty'})"
    return f"a {type(sample).__name__}"


def collate(rows: list[OfflineRow], pad_token_id: int, pad_to_multiple_of: int = 1,
            use_te: bool | None = None) -> dict[str, torch.Tensor]:
    """A batch of b rows, real tokens first (right padding); S = the longest row rounded up
    to a multiple of ``pad_to_multiple_of`` (sequence parallelism: the TP size), A = the most
    actions in a row:

        tokens, position_ids [b, S] long; attention_mask: ``models.gpt.attention_mask`` of
            the real tokens (``use_te`` as there: [b, 1, S, S] local spec, [b, 1, 1, S] TE)
        action_index [b, A] long: the input position predicting each action (action j -> j - 1)
        action_ids [b, A] long; action_mask [b, A] float (1 = real action)
        rewards [b, A] float: the row's reward on its last action, 0 elsewhere
        nonterminal_next [b, A] float: 1 where the row has an action after this one

    Padding: tokens / action_ids ``pad_token_id``, action_index 0, the rest 0."""
    from autorlhf_nemo.models.gpt import attention_mask  # Megatron: only once a batch is built

    if not rows:
        raise ValueError("collate needs at least one row")
    b = len(rows)
    width = max(len(r.tokens) for r in rows)
    width += -width % pad_to_multiple_of
    num_actions = max(len(r.actions) for r in rows)
    tokens = torch.full((b, width), pad_token_id, dtype=torch.long)
    real = torch.zeros(b, width, dtype=torch.long)
    action_index = torch.zeros(b, num_actions, dtype=torch.long)
    action_ids = torch.full((b, num_actions), pad_token_id, dtype=torch.long)
    action_mask = torch.zeros(b, num_actions)
    rewards = torch.zeros(b, num_actions)
    nonterminal = torch.zeros(b, num_actions)
    for i, row in enumerate(rows):
        n, a = len(row.tokens), len(row.actions)
        if a == 0 or row.actions[0] < 1 or row.actions[-1] >= n:
            raise ValueError(f"row {i}: actions {row.actions} must be non-empty indices in [1, {n})")
        tokens[i, :n] = torch.tensor(row.tokens)
        real[i, :n] = 1
        acts = torch.tensor(row.actions)
        action_index[i, :a] = acts - 1
        action_ids[i, :a] = tokens[i, acts]
        action_mask[i, :a] = 1
        rewards[i, a - 1] = row.reward
        nonterminal[i, :a - 1] = 1
    return {"tokens": tokens, "position_ids": (real.cumsum(-1) - 1).clamp(min=0),
            "attention_mask": attention_mask(real, use_te),
            "action_index": action_index, "action_ids": action_ids, "action_mask": action_mask,
            "rewards": rewards, "nonterminal_next": nonterminal}
