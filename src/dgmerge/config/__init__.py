"""Typed, validated configs: every schema of dgmerge in one package that imports no training code.

    from dgmerge.config import load_config, parse_overrides
    cfg = load_config("pacs_mobilenetv2", parse_overrides(["train.feature_cache=off"]))

Modules: base (StrictModel, ConfigError), yaml_values (values reach fields as typed),
backbone, ham, experiment (the sections and ExperimentConfig), loading (files, overrides,
validation) and sweep (the sweep section). Layering: this package may import dgmerge.models,
dgmerge.merging and dgmerge.data, never training, evaluation, pipeline or cli code.
"""

from dgmerge.config.backbone import BackboneConfig, architecture_only, shared_mobilenetv2_config
from dgmerge.config.base import ConfigError, StrictModel
from dgmerge.config.experiment import (MERGES_NEEDING_DATA, TRAINABLE_PATTERN, DataConfig, ExperimentConfig, HamVariant,
                                       MergeSpec, ProbeConfig, TrainConfig, ham_train)
from dgmerge.config.ham import MERGE_TIME_FIELDS, HamConfig, can_reuse, training_key
from dgmerge.config.loading import (SHIPPED_CONFIGS, load_config, parse_overrides, read_yaml_mapping,
                                    resolve_config_path, set_dotted, validate_config)
from dgmerge.config.sweep import HAM_SPACE, SweepSpec, load_sweep
from dgmerge.config.weight_averaging import DIWA_SPACE, DiwaConfig, MAConfig, SwadConfig
from dgmerge.config.yaml_values import PlainScalar

__all__ = [
    "DIWA_SPACE", "DiwaConfig", "MAConfig", "SwadConfig", "HAM_SPACE", "architecture_only", "MERGES_NEEDING_DATA", "MERGE_TIME_FIELDS", "SHIPPED_CONFIGS", "TRAINABLE_PATTERN", "BackboneConfig",
    "ConfigError", "DataConfig", "ExperimentConfig", "HamConfig", "HamVariant", "MergeSpec", "PlainScalar",
    "ProbeConfig", "StrictModel", "SweepSpec", "TrainConfig", "can_reuse", "ham_train", "load_config", "load_sweep",
    "parse_overrides", "read_yaml_mapping", "resolve_config_path", "set_dotted", "shared_mobilenetv2_config",
    "training_key", "validate_config",
]
