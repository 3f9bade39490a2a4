"""Validated configuration: one object per concern (data, model, train, transfer), YAML in and out.

A config is checked once, at the edge: a wrong key, type or value raises :class:`ConfigError`
naming the field, the value given and what is allowed, before any work starts.

The sections live in their own modules (``base``, ``data``, ``model``, ``train``, ``load``); every name is
re-exported here, so ``from mmtransfer.config import X`` is the one import path.

>>> cfg = load_config(None, overrides=["train.lr=3e-4"])
>>> cfg.train.lr
0.0003
"""

from mmtransfer.config.base import AUTO, ConfigError, Seed, Width
from mmtransfer.config.data import (
    IMAGE_DEFAULTS,
    TASK_NAMES,
    AudioColumn,
    ColumnConfig,
    DataConfig,
    ImageColumn,
    TabularColumn,
    TextColumn,
)
from mmtransfer.config.load import (
    MAX_NODES,
    NESTED,
    RunConfig,
    apply_override,
    check_files,
    did_you_mean,
    dump_config,
    load_config,
    read_config_file,
    read_mapping,
    read_rules_file,
    resolve_paths,
    validate,
)
from mmtransfer.config.model import (
    AisfxConfig,
    AttentionConfig,
    CNNConfig,
    CustomConfig,
    EfficientNetLiteConfig,
    EncoderConfig,
    HFConfig,
    MLPConfig,
    ModelConfig,
    RNNConfig,
    TimmConfig,
)
from mmtransfer.config.train import DistillConfig, StrategyConfig, TrainConfig, TransferConfig

__all__ = [
    "AisfxConfig",
    "TASK_NAMES",
    "AUTO",
    "AttentionConfig",
    "AudioColumn",
    "CNNConfig",
    "ColumnConfig",
    "ConfigError",
    "CustomConfig",
    "DataConfig",
    "DistillConfig",
    "EfficientNetLiteConfig",
    "EncoderConfig",
    "HFConfig",
    "IMAGE_DEFAULTS",
    "ImageColumn",
    "MAX_NODES",
    "MLPConfig",
    "ModelConfig",
    "NESTED",
    "RNNConfig",
    "RunConfig",
    "Seed",
    "StrategyConfig",
    "TabularColumn",
    "TextColumn",
    "TimmConfig",
    "TrainConfig",
    "TransferConfig",
    "Width",
    "apply_override",
    "check_files",
    "did_you_mean",
    "dump_config",
    "load_config",
    "read_config_file",
    "read_mapping",
    "read_rules_file",
    "resolve_paths",
    "validate",
]
