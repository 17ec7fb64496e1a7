"""HAM's own settings: one switch per module, so every ablation of HAM Tables 2-5 is a config.

    sae: false                      -> no source enrichment (HAM without SAE)
    opa: false                      -> no sign loss (RHM without OPA)
    historical: none                -> merge the best-on-validation checkpoints (Table 5)
    merge_hparams: {level: tensor}  -> layer-level trimming (Table 4)
    merge_method: ties              -> TIES instead of RHM (Table 3)

The optimizer, batch size and trainable parameters come from `TrainConfig`, shared with ERM and
the single-source baselines; so do the steps, unless `steps` gives HAM a budget of its own.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from dgmerge.config.base import StrictModel
from dgmerge.merging import MergeError, available, get_method


class HamConfig(StrictModel):
    """Lockstep HAM training: SAE (Eq. 2-3), OPA (Eq. 5), historical averaging (Eq. 7), merge."""

    # --- SAE: borrow confident samples of the other sources (Eq. 2-3)
    sae: bool = True
    # "mean": borrow when max softmax > τ_i (the paper); "margin": > τ_i + sae_margin, for frozen
    # heads that are confident everywhere (see ham-spec "Known risks").
    sae_rule: Literal["mean", "margin"] = "mean"
    sae_margin: float = Field(default=0.0, ge=0.0)
    # At most this many borrowed samples per foreign domain per step (the most confident ones).
    sae_max_borrow: int | None = Field(default=None, gt=0)
    # No borrowing during the first steps, while the models are still close to θ0.
    sae_warmup_steps: int = Field(default=0, ge=0)

    # --- OPA: sign loss against the detached mean update vector (Eq. 5)
    opa: bool = True
    opa_weight: float = Field(default=0.1, gt=0.0, description="λ in L = L_CE + λ L_sign")
    opa_mode: Literal["elementwise", "dot"] = "elementwise"

    # --- Historical averaging per source (Eq. 6-7); "none" merges the best checkpoints instead.
    historical: Literal["beta", "ema", "none"] = "beta"
    # Beta(β, β) weights: 0.5 U-shaped (HAM, CLIPood), 1 uniform, > 1 bell-shaped.
    beta: float = Field(default=0.5, gt=0.0)
    ema_decay: float = Field(default=0.999, ge=0.0, lt=1.0)

    # --- Merge of the N_S historical (or best) models
    merge_method: str = "rhm"
    # Passed to dgmerge.merging.merge, e.g. {"trim": 0.2} for RHM, {"level": "tensor"} for
    # layer-level trimming, {"keep": 0.2} for TIES. Empty = the method's defaults.
    merge_hparams: dict[str, Any] = Field(default_factory=dict)
    # "trainable": merge only the trained tensors (the rest stays θ0 exactly), so RHM's
    # model-level quantile is taken over what HAM trains, not diluted by the frozen tensors'
    # zero updates; "all": every float tensor of the state dict, like merging with scope None.
    merge_scope: Literal["trainable", "all"] = "trainable"

    # --- HAM's own training budget (None: train.steps). Its lockstep models can converge later
    # than ERM's; each method is compared at its own converged budget, chosen on source validation.
    steps: int | None = Field(default=None, gt=0)
    # Steps between HAM's source-validation passes (None: train.eval_every). They only pick each
    # model's best checkpoint (the best-checkpoint ablation); the historical averages and their
    # merge do not depend on them, so a long budget can evaluate as rarely as a short one.
    eval_every: int | None = Field(default=None, gt=0)

    # --- Data order. "single_source": every source's stream is seeded as fine_tune seeds a
    # single-source run (seed*1000), so with sae/opa off each model equals the single_source
    # baseline; "erm": seed*1000 + index in train_sets order, the per-domain batches of ERM.
    batch_seeds: Literal["single_source", "erm"] = "single_source"

    @field_validator("merge_method")
    @classmethod
    def _known_method(cls, value: str) -> str:
        if value not in available():
            raise ValueError(f"unknown merge method {value!r}; available: {', '.join(available())}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> "HamConfig":
        if self.sae_rule == "mean" and self.sae_margin != 0.0:
            raise ValueError(f"sae_margin={self.sae_margin} only applies with sae_rule: margin")
        try:
            get_method(self.merge_method).check_hparams(self.merge_hparams)
        except MergeError as err:
            raise ValueError(f"merge_hparams: {err}") from None
        return self


# Fields that only decide how the trained models are merged: changing them needs no retraining.
MERGE_TIME_FIELDS = ("merge_method", "merge_hparams", "merge_scope")


def training_key(cfg: HamConfig) -> dict[str, Any]:
    """The settings that determine HAM's trained models (the merge inputs), nothing else.

    Two configs with equal keys train bit-identical models, so a variant can reuse a run.
    historical: none merges the best checkpoints, which every run keeps: a variant asking for
    them can reuse any run, so the averaging settings drop out of its key.
    """
    key = cfg.model_dump(mode="json", exclude=set(MERGE_TIME_FIELDS))
    if cfg.historical == "none":
        for name in ("historical", "beta", "ema_decay"):
            key.pop(name)
    return key


def can_reuse(variant: HamConfig, trained: HamConfig) -> bool:
    """Whether `variant`'s merge inputs are among what a run trained with `trained` keeps."""
    have = training_key(trained)
    return all(name in have and have[name] == value for name, value in training_key(variant).items())


__all__ = ["MERGE_TIME_FIELDS", "HamConfig", "can_reuse", "training_key"]
