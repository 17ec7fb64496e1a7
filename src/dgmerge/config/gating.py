"""Settings of the gating merge of Ye et al. (the `gating:` section of an experiment config)."""

from __future__ import annotations

from pydantic import Field, field_validator

from dgmerge.config.base import StrictModel

# The plain merges the gating merge builds on (Ye et al.'s AvgMean, Task Arithmetic, RegMean),
# and how gated modules mix (per sample, or once per batch); dgmerge.gating reads both from here.
GATING_BASES = ("average", "task_arithmetic", "regmean")
GATING_MODES = ("sample", "batch")


class GatingConfig(StrictModel):
    """The gate, the m values to compare and the merge of the ungated tensors.

    The experts are the cell's single-source models (same θ0, head and training settings as
    every other method); the gate sees at most `gate_fraction` of each source's training
    split, without labels (task identity only), never the test domain.
    """

    # Gated module counts to compare (the m least-similar blocks are mixed per input).
    ms: list[int] = Field(default_factory=lambda: [0, 1, 3, 5])
    # Bases under the gated rows; every base in GATING_BASES also gets a plain row (no gate).
    bases: list[str] = Field(default_factory=lambda: ["average", "regmean"])
    gate_fraction: float = Field(default=0.15, gt=0.0, le=0.15, description="Ye et al. use at most 15%")
    gate_steps: int = Field(default=150, gt=0)
    gate_batch: int = Field(default=16, gt=0)
    gate_lr: float = Field(default=1e-3, gt=0.0)
    # RegMean: Gram matrices from this many batches of 32 of each source's training split.
    gram_batches: int = Field(default=8, gt=0)
    alpha: float = Field(default=0.9, ge=0.0, le=1.0)
    scale: float = Field(default=0.5, gt=0.0, description="Task Arithmetic λ")
    gate_norms: bool = True
    mode: str = "sample"

    @field_validator("bases")
    @classmethod
    def _known_bases(cls, value: list[str]) -> list[str]:
        unknown = [b for b in value if b not in GATING_BASES]
        if unknown:
            raise ValueError(f"unknown base merge(s) {unknown}; use {', '.join(GATING_BASES)}")
        return value

    @field_validator("mode")
    @classmethod
    def _known_mode(cls, value: str) -> str:
        if value not in GATING_MODES:
            raise ValueError(f"mode={value!r}; use {' or '.join(GATING_MODES)}")
        return value

    @field_validator("ms")
    @classmethod
    def _non_negative(cls, value: list[int]) -> list[int]:
        if any(m < 0 for m in value):
            raise ValueError(f"ms={value}: m counts gated modules, so m ≥ 0")
        return value
