"""Typed configuration: `TrainConfig`, `EvalConfig`, `AttentionConfig` and the named presets.
The CLI, YAML files and the Python API are three views of these dataclasses."""

from .evaluation import DEFAULT_ATTACKS, AttentionConfig, EvalConfig
from .presets import PRESET_HINTS, PRESETS, register_preset
from .train import (
    TrainConfig,
    build_train_config,
    check_device,
    config_hash,
    read_yaml,
    resolve_device,
    save_yaml,
    validate_train_config,
)

__all__ = [
    "DEFAULT_ATTACKS",
    "AttentionConfig",
    "EvalConfig",
    "PRESET_HINTS",
    "PRESETS",
    "register_preset",
    "TrainConfig",
    "build_train_config",
    "check_device",
    "resolve_device",
    "config_hash",
    "read_yaml",
    "save_yaml",
    "validate_train_config",
]
