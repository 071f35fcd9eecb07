"""The configuration reference, generated from the typed schema: ``python -m autorlhf_nemo.docs``.

Writes docs/reference/config.md: every group of ``RootConfig`` and every option with its type,
default, the values validation accepts (read from validation's own tables, ``validate.field_rule``)
and its description (the docstring under the field in config/schema.py). ``--check`` writes
nothing and exits 1 when the file is stale. A field without a description is an error.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import json
import sys
import textwrap
import typing
from pathlib import Path
from typing import Any, Optional

from omegaconf import MISSING

from autorlhf_nemo.config.compose import conf_dir
from autorlhf_nemo.config.schema import ALGORITHMS, AlgorithmConfig, RootConfig
from autorlhf_nemo.config.validate import ONLINE_ONLY, field_rule

SOURCE_TREE = Path(__file__).resolve().parents[1]
REFERENCE = SOURCE_TREE / "docs" / "reference" / "config.md"
# Hydra groups whose presets (conf/<group>/*.yaml) are listed with their section.
PRESET_GROUPS = ("model", "parallel", "algorithm", "task")


class MissingDescription(ValueError):
    """A schema field without the docstring that describes it."""


def field_descriptions(schema: type) -> dict[str, str]:
    """{field: description} of a dataclass: the string literal right under each field's
    definition, inherited from a base class unless the subclass gives its own. Whitespace is
    collapsed to one line."""
    found: dict[str, str] = {}
    for cls in reversed(schema.__mro__):
        if not dataclasses.is_dataclass(cls):
            continue
        body = ast.parse(textwrap.dedent(inspect.getsource(cls))).body[0].body
        for statement, following in zip(body, body[1:]):
            if (isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name)
                    and isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant)
                    and isinstance(following.value.value, str)):
                found[statement.target.id] = " ".join(following.value.value.split())
    missing = [f.name for f in dataclasses.fields(schema) if f.name not in found]
    if missing:
        raise MissingDescription(
            f"{schema.__name__} has fields without a description: {', '.join(missing)}; add a docstring "
            f"under each in autorlhf_nemo/config/schema.py")
    return found


def _type_name(hint: Any) -> str:
    """int, float or null, list[float], ... as a config user reads them."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) is typing.Union:
        return " or ".join("null" if a is type(None) else _type_name(a) for a in args)
    if args:
        return f"{typing.get_origin(hint).__name__}[{', '.join(_type_name(a) for a in args)}]"
    return getattr(hint, "__name__", str(hint))


def _default(field: dataclasses.Field) -> str:
    if field.default_factory is not dataclasses.MISSING:
        value = field.default_factory()
    else:
        value = field.default
    if value is MISSING:
        return "required"
    return f"`{json.dumps(value) if not isinstance(value, str) else value}`"


def _text(text: str) -> str:
    """Prose for Markdown: ``<name>`` would be read as an HTML tag."""
    return text.replace("<", "&lt;")


def _cell(text: str) -> str:
    return _text(text).replace("|", "\\|")


def _rows(schema: type, prefix: str, algorithm: Optional[str], only: Optional[set] = None) -> list[str]:
    """Table rows of a schema's fields (nested dataclasses flattened to dotted names)."""
    descriptions, hints = field_descriptions(schema), typing.get_type_hints(schema)
    rows = []
    for f in dataclasses.fields(schema):
        if only is not None and f.name not in only:
            continue
        if dataclasses.is_dataclass(hints[f.name]):
            rows += _rows(hints[f.name], f"{prefix}{f.name}.", algorithm)
            continue
        rule = field_rule(f"{prefix}{f.name}", algorithm)
        allowed = "true or false" if hints[f.name] is bool else "" if rule is None else _cell(str(rule))
        rows.append(f"| `{prefix}{f.name}` | {_cell(_type_name(hints[f.name]))} | {_default(f)} | "
                    f"{allowed} | {_cell(descriptions[f.name])} |")
    return rows


_HEADER = ["| option | type | default | allowed | description |", "|---|---|---|---|---|"]


def _presets(group: str) -> str:
    names = sorted(p.stem for p in (conf_dir() / group).glob("*.yaml"))
    return f"Presets: {', '.join(f'`{group}={n}`' for n in names)} (conf/{group}/)."


def _doc(schema: type) -> str:
    """The first paragraph of a schema's docstring, on one line."""
    return _text(" ".join(inspect.getdoc(schema).split("\n\n")[0].split()))


def config_reference() -> str:
    """The text of docs/reference/config.md."""
    root_descriptions, hints = field_descriptions(RootConfig), typing.get_type_hints(RootConfig)
    lines = [
        "# Configuration reference",
        "",
        "<!-- Generated by `python -m autorlhf_nemo.docs` from autorlhf_nemo/config/schema.py: do not edit. -->",
        "",
        "Every option of the typed schema (`autorlhf_nemo/config/schema.py`), set on the command line as",
        "`section.option=value` (e.g. `train.lr=3e-6`) or in a YAML file under `conf/`. *default* is the",
        "schema's; the presets, `conf/config.yaml` (model `tiny_llama`, parallel `single`) and",
        "`conf/task_algorithm/<task>_<algorithm>.yaml` override some. *allowed* is what validation accepts",
        "(`autorlhf_nemo/config/validate.py`, checked before any process starts); the layout and batch rules",
        "that tie options together are listed in [Configuration: Validation](../configuration.md#validation).",
        "",
    ]
    for f in dataclasses.fields(RootConfig):
        schema = hints[f.name]
        lines += [f"## {f.name}", ""]
        if f.name == "algorithm":
            lines += [_text(root_descriptions[f.name]), ""] + _algorithm_section()
            continue
        if not dataclasses.is_dataclass(schema):   # a plain option of the root (run_dir)
            lines += _HEADER + _rows(RootConfig, "", None, only={f.name}) + [""]
            continue
        lines += [_doc(schema), ""]
        if f.name in PRESET_GROUPS:
            lines += [_presets(f.name), ""]
        lines += _HEADER + _rows(schema, f"{f.name}.", None) + [""]
    return "\n".join(lines).rstrip("\n") + "\n"


def _algorithm_section() -> list[str]:
    """The options every algorithm shares, then each algorithm's own and the shared defaults it changes."""
    shared = {f.name for f in dataclasses.fields(AlgorithmConfig)}
    offline = ", ".join(f"`{k}`" for k in ONLINE_ONLY)
    lines = [_doc(AlgorithmConfig), "", _presets("algorithm"), "", "Options of every algorithm "
             "(defaults of the base; an algorithm's own defaults below). algorithm=ilql, offline, refuses "
             f"the online ones set away from their defaults: {offline}.", ""]
    lines += _HEADER + _rows(AlgorithmConfig, "algorithm.", "ppo", only=shared - {"name"}) + [""]
    base = {f.name: _default(f) for f in dataclasses.fields(AlgorithmConfig)}
    for name, schema in ALGORITHMS.items():
        defaults = {f.name: _default(f) for f in dataclasses.fields(schema)}
        changed = sorted(k for k in shared - {"name"} if defaults[k] != base[k])
        own = defaults.keys() - shared
        lines += [f"### algorithm={name}", "", _doc(schema), ""]
        if changed:
            lines += ["Shared options with another default here: "
                      + ", ".join(f"`{k}` = {defaults[k]}" for k in changed) + ".", ""]
        if own:
            lines += _HEADER + _rows(schema, "algorithm.", name, only=own) + [""]
    return lines


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m autorlhf_nemo.docs", description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 when the file is stale")
    parser.add_argument("--output", type=Path, default=None,
                        help="default: docs/reference/config.md of the source checkout")
    args = parser.parse_args(argv)
    if args.output is None:
        if not (SOURCE_TREE / "mkdocs.yml").exists():
            print(f"autorlhf_nemo.docs: {SOURCE_TREE} is not a source checkout (no mkdocs.yml): run this from "
                  f"a clone (pip install -e .), or pass --output", file=sys.stderr)
            return 2
        args.output = REFERENCE
    try:
        text = config_reference()
    except MissingDescription as error:
        print(f"autorlhf_nemo.docs: {error}", file=sys.stderr)
        return 2
    if args.check:
        current = args.output.read_text() if args.output.exists() else None
        if current != text:
            print(f"autorlhf_nemo.docs: {args.output} is stale: run python -m autorlhf_nemo.docs", file=sys.stderr)
            return 1
        print(f"{args.output} is up to date")
        return 0
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
