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

import json
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


@dataclass
class Table:
    """A loaded source: its rows, and for a JSONL file each row's line (messages name both)."""

    rows: Any                         # datasets.Dataset
    lines: Optional[list[int]] = None

    def where(self, source: str, index: int) -> str:
        """How a message names row ``index``."""
        return f"{source} row {index}" + (f" (line {self.lines[index]})" if self.lines else "")


def load_table(source: Any, split: str = "train", cache_dir: Optional[str] = None) -> Table:
    """``source`` (module docstring) as a Table; its datasets progress bars hidden (a run prints
    what it loaded). A JSONL file is read line by line here (json), so a bad line is named."""
    import datasets
    from datasets.utils import logging as datasets_logging

    shown = datasets_logging.is_progress_bar_enabled()
    datasets_logging.disable_progress_bar()
    try:
        return _load_quietly(source, split, cache_dir)
    finally:
        if shown:
            datasets_logging.enable_progress_bar()


def _kind(value: Any) -> str:
    """The JSON kind of a value: null, boolean, number, string, list or object."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    return {str: "string", list: "list", dict: "object"}[type(value)]


def read_jsonl(path: Path) -> Table:
    """The objects of a JSONL file (blank lines skipped) as a Table with their line numbers.
    A line that is not one JSON object, or a value whose kind differs from the column's in the
    lines before (arrow holds one kind per column), raises DataError naming the line."""
    import datasets

    rows, lines, kinds = [], [], {}
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path} row {len(rows)} (line {number})"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{where}: invalid JSON ({e.msg}, column {e.colno}): each line must be one "
                                f"JSON object") from None
            if not isinstance(row, dict):
                raise DataError(f"{where}: a JSON {_kind(row)}, not an object: each line must be one JSON object")
            for key, value in row.items():
                kind = _kind(value)
                if kind == "null":
                    continue
                first = kinds.setdefault(key, (kind, number))
                if first[0] != kind:
                    raise DataError(f"{where}: '{key}' is a {kind}, but line {first[1]} has a {first[0]}: one kind "
                                    f"of value per column")
            rows.append(row)
            lines.append(number)
    if not rows:
        raise DataError(f"{path}: no rows (every line is blank)")
    columns = list(dict.fromkeys(key for row in rows for key in row))
    try:
        table = datasets.Dataset.from_dict({c: [row.get(c) for row in rows] for c in columns})
    except (TypeError, ValueError) as e:  # pyarrow: nested values of different shapes
        raise DataError(f"{path}: its rows do not form one table ({type(e).__name__}: {e}): give every row's "
                        f"field the same structure") from None
    return Table(table, lines)


def _load_quietly(source: Any, split: str, cache_dir: Optional[str]) -> Table:
    import datasets

    if isinstance(source, datasets.Dataset):
        return Table(source)
    if isinstance(source, datasets.DatasetDict):
        raise DataError(f"a DatasetDict ({sorted(source)}): pass one split of it, e.g. dataset['{split}']")
    path = Path(str(source)).expanduser()
    if path.is_file():
        builder = _BUILDERS.get("".join(path.suffixes[-1:]).lower())
        if builder is None:
            raise DataError(f"{path}: unknown file type {path.suffix!r}: use one of {sorted(_BUILDERS)}")
        if path.suffix.lower() == ".jsonl":
            return read_jsonl(path)
        try:
            return Table(datasets.load_dataset(builder, data_files=str(path), split="train", cache_dir=cache_dir))
        except Exception as error:  # noqa: BLE001 - datasets wraps the parser's error in its own
            cause = error.__cause__ or error
            raise DataError(f"{path}: datasets could not read it as {builder} ({type(cause).__name__}: "
                            f"{cause})") from None
    try:
        return Table(datasets.load_dataset(str(source), split=split, cache_dir=cache_dir))
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


def check_rows(dataset: Any, kind: str, source: str, lines: Optional[list[int]] = None) -> bool:
    """Raise DataError at the first row that cannot be used (named by its index, and its line in a
    JSONL file: ``lines``); returns whether the rows are conversational (their text fields are
    message lists)."""
    columns = TYPES[kind]
    conversational = None
    table = Table(dataset, lines)
    for index, row in enumerate(dataset):
        where = table.where(source, index)
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
    loaded = load_table(source, split, cache_dir)
    table = loaded.rows
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
    conversational = check_rows(table, kind, name, loaded.lines)
    held_out = None
    if eval_split is not None:
        held_out = load_table(source, eval_split, cache_dir).rows.rename_columns(renames)
        check_rows(held_out, kind, f"{name} [{eval_split}]")
    elif eval_fraction is not None:
        parts = table.train_test_split(test_size=eval_fraction, seed=seed, shuffle=True)
        table, held_out = parts["train"], parts["test"]
    return Splits(table, held_out, kind, conversational, name)


def load_data_splits(data_cfg, source: Any, seed: int, allowed: Sequence[str]) -> Splits:
    """load_splits with the data group's options (config/schema.py DataConfig): data.eval_split, else
    data.eval_fraction of the rows (0: none held out)."""
    d = data_cfg
    return load_splits(source, split=d.split, eval_split=d.eval_split,
                       eval_fraction=None if d.eval_split or not d.eval_fraction else d.eval_fraction,
                       limit=d.limit, columns=dict(d.columns), seed=seed, allowed=allowed)
