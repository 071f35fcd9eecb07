"""The supported software stacks, and the one place for code that differs between them.

autorlhf_nemo is tested on two stacks (setup.py picks one by the Python version):

    Python 3.11: megatron-core 0.16.x, nemo-toolkit 2.7.x, transformers 4.57.x
    Python 3.12: megatron-core 0.19.x, nemo-toolkit 3.0.x, transformers 5.x

Releases in between (megatron-core 0.17, 0.18) are untested: Megatron moves its
CUDA touch points and private helpers between minor releases, and a job that
fails an hour in on a cluster costs more than a refusal at start-up. So
:func:`check_supported` runs before any expensive work (the CLI's first line,
``runtime.initialize``) and names the installed and the supported versions.
It reads package metadata only (no imports of megatron or NeMo). Either
megatron-core or nemo-toolkit release line is accepted on either Python (a
container may pair its Python with either line, and the version-dependent code
below keys on the library, not on Python); what is refused is a release line
that no CI stage tests.

Code that must differ between these versions lives here, never as version checks
scattered through the package.
"""

from __future__ import annotations

import importlib.metadata
import re
import sys

# distribution -> ((release line, the stack it belongs to), ...)
SUPPORTED: dict[str, tuple[tuple[str, str], ...]] = {
    "megatron-core": (("0.16", "Python 3.11 stack"), ("0.19", "Python 3.12 stack")),
    "nemo-toolkit": (("2.7", "Python 3.11 stack"), ("3.0", "Python 3.12 stack")),
}
_PIP_RANGE = {("megatron-core", "0.16"): ">=0.16.1,<0.17", ("megatron-core", "0.19"): ">=0.19,<0.20",
              ("nemo-toolkit", "2.7"): "[core]>=2.7,<2.8", ("nemo-toolkit", "3.0"): "[core]>=3.0,<3.1"}


class UnsupportedVersionError(RuntimeError):
    """An installed megatron-core or nemo-toolkit outside the tested release lines."""


def installed_version(distribution: str) -> str | None:
    """The installed version of ``distribution`` (from its metadata), or None when absent."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _release_line(version: str) -> str:
    """Major.minor of a version: 0.19.2 -> 0.19; 3.0.0rc1 -> 3.0; 0.19rc1 -> 0.19; 0.19.2+nv -> 0.19."""
    match = re.match(r"(\d+)\.(\d+)", version)
    return f"{match.group(1)}.{match.group(2)}" if match else version


def _stack_line(distribution: str) -> str:
    """The release line setup.py installs on this Python."""
    return SUPPORTED[distribution][1 if sys.version_info >= (3, 12) else 0][0]


def unsupported() -> list[str]:
    """One message per installed megatron-core / nemo-toolkit outside the tested lines.
    A package that is not installed is not reported here (its import fails plainly)."""
    problems = []
    for distribution, lines in SUPPORTED.items():
        version = installed_version(distribution)
        if version is None or _release_line(version) in {line for line, _ in lines}:
            continue
        supported = " and ".join(f"{line}.x ({stack})" for line, stack in lines)
        line = _stack_line(distribution)
        pip = f"pip install '{distribution}{_PIP_RANGE[(distribution, line)]}'"
        problems.append(f"{distribution} {version} is installed; autorlhf_nemo supports {supported}: {pip}")
    return problems


def check_supported() -> None:
    """Raise :class:`UnsupportedVersionError` naming installed and supported versions."""
    problems = unsupported()
    if problems:
        raise UnsupportedVersionError("; ".join(problems))


# --------------------------------------------------------------------------- transformers 4.57 / 5.x
def chat_prompt_ids(tokenizer, messages: list[dict], add_generation_prompt: bool = True) -> list[int]:
    """Token ids of ``messages`` in the tokenizer's chat template.

    ``apply_chat_template(..., tokenize=True)`` returns a list of ids in transformers 4.57
    and a ``BatchEncoding`` (``return_dict=True`` became the default) in 5.x; asking for
    ``return_dict=False`` gives the list on both."""
    return list(tokenizer.apply_chat_template(messages, add_generation_prompt=add_generation_prompt,
                                              tokenize=True, return_dict=False))
