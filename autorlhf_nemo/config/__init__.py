"""Typed config schemas (Hydra ConfigStore) and layout validation."""

from autorlhf_nemo.config.schema import (
    ModelConfig,
    ParallelConfig,
    RootConfig,
    TrainConfig,
    register_configs,
)
from autorlhf_nemo.config.validate import ConfigError, validate_config

__all__ = [
    "ConfigError",
    "ModelConfig",
    "ParallelConfig",
    "RootConfig",
    "TrainConfig",
    "register_configs",
    "validate_config",
]
