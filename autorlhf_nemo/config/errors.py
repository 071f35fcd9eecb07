"""The error of a configuration that cannot run (raised by the schema's conversion and by validation)."""

from __future__ import annotations


class ConfigError(ValueError):
    """A configuration that cannot run; the message lists every problem and its fix."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"invalid configuration ({len(problems)} problem(s)):\n{lines}")
