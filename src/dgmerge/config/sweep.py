"""The `sweep:` section of a sweep config: which hyperparameters vary, as a grid or random draws.

A sweep file is an experiment config plus this section; its keys are dotted paths into the
experiment config (train.lr, ham.merge_hparams.trim), and each value reaches that field as it
would from the experiment section itself (`train.feature_cache: [off, disk]` stays text).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, field_validator

from dgmerge.config.base import ConfigError, StrictModel
from dgmerge.config.experiment import ExperimentConfig
from dgmerge.config.loading import read_yaml_mapping, resolve_config_path
from dgmerge.config.yaml_values import annotation_at, resolve_for, resolve_model

# HAM's random search space (HAM paper, implementation details).
HAM_SPACE: dict[str, list[Any]] = {
    "train.lr": [5e-6, 1e-5],
    "train.steps": [500, 3000, 5000, 10000],
    "ham.merge_hparams.trim": [0.2, 0.4, 0.6, 0.8],
    "ham.opa_weight": [0.1, 0.5, 1.0],
}


class SweepSpec(StrictModel):
    """Which hyperparameters a sweep varies."""

    # Full grid: every combination of these values.
    grid: dict[str, list[Any]] = Field(default_factory=dict)
    # Random search: `trials` draws from `space` ("ham" = HAM's space), seeded by `seed`.
    trials: int = Field(default=0, ge=0)
    space: dict[str, list[Any]] | str = Field(default_factory=dict)
    seed: int = 0

    @field_validator("grid")
    @classmethod
    def _non_empty_lists(cls, value: dict[str, list[Any]]) -> dict[str, list[Any]]:
        empty = [k for k, v in value.items() if not v]
        if empty:
            raise ValueError(f"grid values must be non-empty lists: {empty}")
        return value

    def search_space(self) -> dict[str, list[Any]]:
        """The random-search space: `space` itself, or the named one ("ham")."""
        if self.space == "ham":
            return HAM_SPACE
        if isinstance(self.space, str):
            raise ValueError(f"unknown named search space {self.space!r} (known: ham)")
        return self.space


def resolve_sweep_section(section: Any) -> Any:
    """The sweep section read from YAML, each grid/space value settled for the field its key names."""
    if not isinstance(section, dict):  # not a mapping: left for pydantic to report
        return resolve_for(SweepSpec, section)
    out = resolve_model(SweepSpec, section)
    for name in ("grid", "space"):
        values = section.get(name)
        if isinstance(values, dict):
            out[name] = {str(dotted): resolve_for(list[annotation_at(ExperimentConfig, str(dotted))], choices)
                         for dotted, choices in values.items()}
    return out


def load_sweep(path: Path) -> tuple[dict[str, Any], SweepSpec]:
    """The base experiment (raw dict, as read_yaml_mapping returns it) and the sweep section of a sweep file."""
    path = resolve_config_path(path)
    raw = read_yaml_mapping(path)
    try:
        spec = SweepSpec.model_validate(resolve_sweep_section(raw.pop("sweep", {}) or {}))
    except Exception as exc:  # pydantic's message names the field
        raise ConfigError(f"{path}: invalid sweep section: {exc}") from exc
    return raw, spec


__all__ = ["HAM_SPACE", "SweepSpec", "load_sweep", "resolve_sweep_section"]
