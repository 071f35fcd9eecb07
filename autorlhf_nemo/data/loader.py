"""One loader for every dataset a run trains or samples from, through Hugging Face ``datasets``.

A source is a local file (``.jsonl``/``.json``, ``.parquet``, ``.csv``), a local directory that
``datasets.load_dataset`` understands, an in-memory ``datasets.Dataset``, or, where a hub is
reachable, a dataset name. Its columns decide its type, with TRL's names (first match wins):

==================== =================================== ============================================
type                 columns                             used by
==================== =================================== ============================================
preference           prompt, chosen, rejected            DPO, reward models
implicit_preference  chosen, rejected                    the same, the prompt being their common start
prompt_completion    prompt, completion                  SFT
chat                 messages                            SFT (every assistant turn is trained)
language_modeling    text                                SFT (every token is trained)
prompt_only          prompt                              RL prompts (PPO, online DPO, RLOO, GRPO)
==================== =================================== ============================================

Each text field is a string (standard) or a list of ``{"role", "content"}`` messages
(conversational), the same in every row. Rows that cannot train (a missing or ``null`` field, a
value of another kind, an empty response, ``chosen`` equal to ``rejected``) raise
:class:`DataError` naming the source and the row, before any process group starts.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

# type -> the columns that make it, in the order they are tried
TYPES: dict[str, tuple[str, ...]] = {
    "preference": ("prompt", "chosen", "rejected"),
    "implicit_preference": ("chosen", "rejected"),
    "prompt_completion": ("prompt", "completion"),
    "chat": ("messages",),
    "language_modeling": ("text",),
    "prompt_only": ("prompt",),
}
# the columns of each type that a model is trained to produce: empty ones cannot train
RESPONSES: dict[str, tuple[str, ...]] = {
    "preference": ("chosen", "rejected"), "implicit_preference": ("chosen", "rejected"),
    "prompt_completion": ("completion",), "chat": ("messages",), "language_modeling": ("text",),
    "prompt_only": (),
}
_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}


class DataError(ValueError):
    """A dataset or a row of it that cannot be used; the message names the source, the row and the fix."""


@dataclass
class Splits:
    """A loaded source: its rows for training and, when asked for, held out for evaluation."""

    train: Any                 # datasets.Dataset
    eval: Optional[Any]        # datasets.Dataset or None
    type: str                  # a key of TYPES
    conversational: bool       # the text fields are lists of messages
    source: str                # how messages name it (the path, or "<datasets.Dataset>")


def _load(source: Any, split: str, cache_dir: Optional[str]) -> Any:
    """``source`` as a datasets.Dataset (its progress bars hidden: a run prints what it loaded)."""
    import datasets
    from datasets.utils import logging as datasets_logging

    shown = datasets_logging.is_progress_bar_enabled()
    datasets_logging.disable_progress_bar()
    try:
        return _load_quietly(source, split, cache_dir)
    finally:
        if shown:
            datasets_logging.enable_progress_bar()


def _load_quietly(source: Any, split: str, cache_dir: Optional[str]) -> Any:
    import datasets

    if isinstance(source, datasets.Dataset):
        return source
    if isinstance(source, datasets.DatasetDict):
        raise DataError(f"a DatasetDict ({sorted(source)}): pass one split of it, e.g. dataset['{split}']")
    path = Path(str(source)).expanduser()
    if path.is_file():
        builder = _BUILDERS.get("".join(path.suffixes[-1:]).lower())
        if builder is None:
            raise DataError(f"{path}: unknown file type {path.suffix!r}: use one of {sorted(_BUILDERS)}")
        return datasets.load_dataset(builder, data_files=str(path), split="train", cache_dir=cache_dir)
    try:
        return datasets.load_dataset(str(source), split=split, cache_dir=cache_dir)
    except Exception as error:   # noqa: BLE001 - datasets raises many kinds; all mean "cannot load it"
        where = "a directory" if path.is_dir() else "neither a local file nor a directory"
        raise DataError(f"data.path={source}: {where}, and datasets.load_dataset could not load it as a dataset "
                        f"({type(error).__name__}: {error}); give a .jsonl, .json, .parquet or .csv file, a "
                        f"datasets directory, or a hub name where a hub is reachable") from None


def detect_type(columns: Sequence[str]) -> Optional[str]:
    """The first type of TYPES whose columns are all present (None: no type fits)."""
    return next((name for name, needed in TYPES.items() if set(needed) <= set(columns)), None)


def _is_messages(value: Any) -> bool:
    return (isinstance(value, list) and len(value) > 0 and
            all(isinstance(m, Mapping) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                for m in value))


def check_rows(dataset: Any, kind: str, source: str) -> bool:
    """Raise DataError at the first row that cannot be used; returns whether the rows are
    conversational (their text fields are message lists)."""
    columns = TYPES[kind]
    conversational = None
    for index, row in enumerate(dataset):
        where = f"{source} row {index}"
        for column in columns:
            value = row.get(column)
            if value is None:
                raise DataError(f"{where}: '{column}' is missing (null): every {kind} row needs {list(columns)}; "
                                f"fix or remove the row")
            is_text, is_chat = isinstance(value, str), _is_messages(value)
            if not (is_text or is_chat):
                raise DataError(f"{where}: '{column}' is a {type(value).__name__}, not a string or a list of "
                                f"{{'role', 'content'}} messages")
            if conversational is None:
                conversational = is_chat
            elif conversational != is_chat:
                raise DataError(f"{where}: '{column}' is {'a message list' if is_chat else 'a string'}, but the "
                                f"rows before are {'message lists' if conversational else 'strings'}: one kind "
                                f"for every text field of the dataset")
            if column in RESPONSES[kind] and (value.strip() == "" if is_text else
                                              all(m["content"].strip() == "" for m in value)):
                raise DataError(f"{where}: '{column}' is empty: there is nothing to train on; fix or remove the row")
        if "chosen" in columns and row["chosen"] == row["rejected"]:
            raise DataError(f"{where}: 'chosen' and 'rejected' are identical: the pair prefers nothing; "
                            f"fix or remove the row")
    if conversational is None:
        raise DataError(f"{source}: no rows")
    return conversational


def extract_prompt(chosen: Any, rejected: Any) -> tuple[Any, Any, Any]:
    """(prompt, chosen, rejected) of an implicit-prompt pair, by TRL's rule: the prompt is the
    longest common start (characters of strings, whole messages of message lists); of strings,
    a space just before the point where they part moves to the responses."""
    limit = min(len(chosen), len(rejected))
    index = next((i for i in range(limit) if chosen[i] != rejected[i]), limit)
    if isinstance(chosen, str) and index > 0 and chosen[index - 1] == " ":
        index -= 1
    return chosen[:index], chosen[index:], rejected[index:]


def load_splits(source: Any, *, split: str = "train", eval_split: Optional[str] = None,
                eval_fraction: Optional[float] = None, limit: Optional[int] = None,
                columns: Optional[Mapping[str, str]] = None, seed: int = 0, allowed: Sequence[str] = tuple(TYPES),
                cache_dir: Optional[str] = None) -> Splits:
    """Load ``source`` (see the module), rename ``columns`` ({our name: the source's name}), keep
    the first ``limit`` rows, hold out ``eval_split`` (a split of a hub or directory dataset) or a
    seeded ``eval_fraction`` of the rows, detect the type (one of ``allowed``) and check every row."""
    import datasets

    name = "<datasets.Dataset>" if isinstance(source, datasets.Dataset) else str(source)
    if eval_split is not None and eval_fraction is not None:
        raise DataError("data.eval_split and data.eval_fraction both set: hold out one way")
    if eval_fraction is not None and not 0 < eval_fraction < 1:
        raise DataError(f"data.eval_fraction={eval_fraction}: use a fraction in (0, 1)")
    table = _load(source, split, cache_dir)
    renames = {theirs: ours for ours, theirs in (columns or {}).items() if theirs != ours}
    missing = [theirs for theirs in renames if theirs not in table.column_names]
    if missing:
        raise DataError(f"{name}: data.columns names {missing}, which the dataset does not have (its columns: "
                        f"{table.column_names})")
    table = table.rename_columns(renames)
    if limit is not None:
        table = table.select(range(min(limit, len(table))))
    kind = detect_type(table.column_names)
    if kind is None or kind not in allowed:
        wanted = " or ".join(f"{k} ({', '.join(TYPES[k])})" for k in allowed)
        raise DataError(f"{name}: columns {table.column_names} are {'no known type' if kind is None else kind}: "
                        f"this run needs {wanted}; rename with data.columns.<ours>=<theirs>")
    conversational = check_rows(table, kind, name)
    held_out = None
    if eval_split is not None:
        held_out = _load(source, eval_split, cache_dir).rename_columns(renames)
        check_rows(held_out, kind, f"{name} [{eval_split}]")
    elif eval_fraction is not None:
        parts = table.train_test_split(test_size=eval_fraction, seed=seed, shuffle=True)
        table, held_out = parts["train"], parts["test"]
    return Splits(table, held_out, kind, conversational, name)
