"""Settings of the weight-averaging DG methods a user would pick instead of HAM: MA, SWAD, DiWA.

- `ma`: ERM with a uniform moving average of the weights from `start_step` on (Arpit et al. 2022);
- `swad`: SWAD's dense averaging inside the window its validation-loss rule picks (Cha et al. 2021);
- `diwa`: the weight average of `runs` ERM runs from the shared θ0 with hyperparameters drawn from
  `space` (Ramé et al. 2022), uniform and greedy by source validation.

MA and SWAD read the ERM run's own trajectory, so they cost an average per step beyond it.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator

from dgmerge.config.base import StrictModel

# DiWA's random space, shrunk to what a frozen-head fine-tune has (Ramé et al. draw lr,
# weight decay, batch size and dropout around DomainBed's defaults). Values are multipliers of
# train.lr and absolute weight decays, so the space follows the config it is used with.
DIWA_SPACE: dict[str, list[Any]] = {
    "lr_scale": [0.5, 1.0, 2.0],
    "weight_decay": [0.0, 1e-4, 1e-2],
}


class MAConfig(StrictModel):
    """ERM + MA: the uniform average of every iterate from `start_step` on (Arpit et al. 2022)."""

    # Arpit et al. start averaging at step 100 of 5000; a start past the last step is refused.
    start_step: int = Field(default=100, ge=0)


class SwadConfig(StrictModel):
    """SWAD's loss-valley rule (Cha et al. 2021), with its published defaults (training/swad.py).

    Every `eval_every` steps the segment's dense average and the source-validation loss are
    recorded; the valley is found at the first segment whose loss is the minimum of the next
    `n_converge`, the window reaches back from it (within the last `n_tolerance` segments) while
    the loss stays under τ = `tolerance_ratio` × the mean of those `n_converge` losses, and
    closes when the minimum loss of `n_tolerance` consecutive segments exceeds τ.
    """

    n_converge: int = Field(default=3, ge=1, description="N_s")
    n_tolerance: int = Field(default=6, ge=1, description="N_e")
    # The paper's r = 1.2 multiplies the mean loss; the official code (khanrc/swad) sets
    # tolerance_ratio 0.3 and multiplies by 1 + 0.3 = 1.3. Here the value is the multiplier.
    tolerance_ratio: float = Field(default=1.2, gt=1.0, description="r: the valley's loss threshold ratio")
    # K: steps between validation-loss checks (None = train.eval_every).
    eval_every: int | None = Field(default=None, gt=0)


class DiwaConfig(StrictModel):
    """DiWA: M ERM runs from the shared θ0, each with its own seed and a draw from `space`."""

    runs: int = Field(default=5, ge=1, description="M")
    space: dict[str, list[Any]] = Field(default_factory=lambda: dict(DIWA_SPACE))
    seed: int = 0

    @field_validator("space")
    @classmethod
    def _known_keys(cls, value: dict[str, list[Any]]) -> dict[str, list[Any]]:
        unknown = set(value) - set(DIWA_SPACE)
        if unknown:
            raise ValueError(f"diwa.space keys must be among {sorted(DIWA_SPACE)}, got {sorted(unknown)}")
        empty = [k for k, v in value.items() if not v]
        if empty:
            raise ValueError(f"diwa.space values must be non-empty lists: {empty}")
        return value


__all__ = ["DIWA_SPACE", "DiwaConfig", "MAConfig", "SwadConfig"]
