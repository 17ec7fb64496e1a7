"""The `sweep:` section of a sweep config: which hyperparameters vary, as a grid or random draws.

A sweep file is an experiment config plus this section; its keys are dotted paths into the
experiment config (train.lr, ham.merge_hparams.trim), and each value reaches that field as it
would from the experiment section itself (`train.feature_cache: [off, disk]` stays text).
`launcher` says where the jobs run: one after the other in this process, or as a SLURM job
array through submitit with the resources of the `slurm:` sub-section.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

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


# sbatch --time: minutes, minutes:seconds, hours:minutes:seconds, days-hours,
# days-hours:minutes or days-hours:minutes:seconds.
_SLURM_TIME = re.compile(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?")


def slurm_minutes(value: str) -> int:
    """Minutes of an sbatch --time value ("240", "4:00:00", "1-12"), seconds rounded up; ValueError if malformed."""
    match = _SLURM_TIME.fullmatch(value.strip())
    if match is None:
        raise ValueError(f"time must be minutes or sbatch's [days-]hours:minutes:seconds, got {value!r}")
    days, first, second, third = (int(g) if g is not None else None for g in match.groups())
    if days is not None:  # days-hours[:minutes[:seconds]]
        hours, minutes, seconds = first or 0, second or 0, third or 0
        days_min = days * 24 * 60
    elif third is not None:  # hours:minutes:seconds
        hours, minutes, seconds, days_min = first or 0, second or 0, third, 0
    else:  # minutes[:seconds]
        hours, minutes, seconds, days_min = 0, first or 0, second or 0, 0
    total = days_min + hours * 60 + minutes + int(seconds > 0)
    if total <= 0:
        raise ValueError(f"time must be at least one minute, got {value!r}")
    return total


class SlurmSpec(StrictModel):
    """SLURM resources of each sweep job (one task of a job array), passed to submitit."""

    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    # Wall-clock limit per job, written as sbatch's --time. A text field, so YAML 1.1 does not
    # read `4:00:00` as the base-60 number 14400; submitit's own default (5 minutes) would kill
    # most training jobs, hence a default of four hours.
    time: str = "4:00:00"
    gpus_per_node: int | None = Field(default=None, ge=0)
    cpus_per_task: int | None = Field(default=None, ge=1)
    mem_gb: float | None = Field(default=None, gt=0)
    # At most this many jobs of the array run at once (sbatch --array=...%N).
    array_parallelism: int | None = Field(default=None, ge=1)
    constraint: str | None = None
    # Any other sbatch option, passed through as submitit's slurm_additional_parameters.
    additional_parameters: dict[str, Any] = Field(default_factory=dict)
    # Where submitit writes job scripts and logs (default: <output_dir>/slurm).
    folder: Path | None = None

    @field_validator("time", mode="before")
    @classmethod
    def _time_spec(cls, value: Any) -> Any:
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)  # minutes, when set from Python
        if isinstance(value, str):
            slurm_minutes(value)
        return value

    @field_validator("partition", "account", "qos", "constraint")
    @classmethod
    def _non_empty(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("must not be empty (leave the key out for the cluster's default)")
        return value

    @property
    def timeout_min(self) -> int:
        """`time` in minutes, as submitit takes it."""
        return slurm_minutes(self.time)


class SweepSpec(StrictModel):
    """Which hyperparameters a sweep varies."""

    # Full grid: every combination of these values.
    grid: dict[str, list[Any]] = Field(default_factory=dict)
    # Random search: `trials` draws from `space` ("ham" = HAM's space), seeded by `seed`.
    trials: int = Field(default=0, ge=0)
    space: dict[str, list[Any]] | str = Field(default_factory=dict)
    seed: int = 0
    # Where the jobs run: in this process one after the other, or as a SLURM job array.
    launcher: Literal["local", "slurm"] = "local"
    slurm: SlurmSpec = Field(default_factory=SlurmSpec)

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


__all__ = ["HAM_SPACE", "SlurmSpec", "SweepSpec", "load_sweep", "resolve_sweep_section", "slurm_minutes"]
