"""Compose the Hydra config tree from Python (tests, the Python API, tools)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from autorlhf_nemo.config.schema import RootConfig, register_configs, typed_config


def conf_dir() -> Path:
    """The config tree: the repository's conf/ or, when installed, the packaged copy."""
    package = Path(__file__).resolve().parents[1]
    for candidate in (package.parent / "conf", package / "conf"):
        if (candidate / "config.yaml").exists():
            return candidate
    raise FileNotFoundError("conf/config.yaml not found next to or inside the autorlhf_nemo package")


def compose_config(overrides: Sequence[str] = (), config_name: str = "config") -> DictConfig:
    """Same result as ``python -m autorlhf_nemo <overrides>`` composes."""
    register_configs()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        return compose(config_name=config_name, overrides=list(overrides))


def compose_typed_config(overrides: Sequence[str] = (), config_name: str = "config") -> RootConfig:
    """``compose_config`` as the schema's objects (``typed_config``): what scripts and tools
    that build models start from."""
    return typed_config(compose_config(overrides, config_name))
