"""The experiment config: data, backbone, training, merges and the methods to run.

Every section is a pydantic model that forbids unknown keys, so a typo in a YAML file fails
before any work starts, with the field's name in the message.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from pathlib import Path
from typing import Any, Literal

from pydantic import (Field, SerializerFunctionWrapHandler, ValidationInfo, field_validator,
                      model_serializer, model_validator)
from pydantic_core import PydanticCustomError

from dgmerge.config.backbone import BackboneConfig
from dgmerge.config.base import StrictModel
from dgmerge.config.gating import GatingConfig
from dgmerge.config.tasks import TasksConfig
from dgmerge.config.ham import HamConfig
from dgmerge.config.weight_averaging import DiwaConfig, MAConfig, SwadConfig
from dgmerge.device import DEVICE_PATTERN
from dgmerge.merging import available, get_method

TRAINABLE_PATTERN = re.compile(r"^(all|none|norms_biases|last:[1-9][0-9]*)$")
# Key of validate_config's `methods` (the registered experiment methods) in pydantic's context.
METHODS_CONTEXT = "methods"


class DataConfig(StrictModel):
    """A DomainBed-layout dataset and how it is split."""

    root: Path = Path("data")
    dataset: str = "PACS"
    # Test domains to hold out, one run each; None = every domain in turn.
    test_domains: list[str] | None = None
    holdout_fraction: float = Field(default=0.2, gt=0.0, lt=1.0)
    # Which images of the test domain are scored: all of them, or its in/out split.
    test_split: Literal["full", "in", "out"] = "full"
    train_augment: bool = False
    on_bad_image: Literal["raise", "skip"] = "raise"
    # Subsample each domain for quick runs (None = every image).
    max_images_per_domain: int | None = Field(default=None, gt=0)
    num_workers: int = Field(default=0, ge=0)
    # Keep decoded images in memory (only without train_augment); for small datasets.
    cache_images: bool = False


class ProbeConfig(StrictModel):
    """Linear-probe head for backbones without a text encoder (trained on frozen features)."""

    # What the probe is fitted on: the pooled source training splits ("train"), or a disjoint
    # "probe split" of each source's training split that fine-tuning and SAE never see
    # ("probe_split", `split_fraction` of each), so SAE does not score samples the head memorised.
    fit_on: Literal["train", "probe_split"] = "train"
    split_fraction: float = Field(default=0.2, gt=0.0, lt=1.0)

    epochs: int = Field(default=30, gt=0)
    lr: float = Field(default=1e-2, gt=0.0)
    weight_decay: float = Field(default=1e-4, ge=0.0)
    batch_size: int = Field(default=256, gt=0)


class TrainConfig(StrictModel):
    """Fine-tuning of an encoder under a frozen head (AdamW, cosine schedule)."""

    steps: int = Field(default=300, gt=0)
    batch_size: int = Field(default=24, gt=0, description="images per source domain per step")
    lr: float = Field(default=1e-5, gt=0.0)
    weight_decay: float = Field(default=0.1, ge=0.0)
    # Which encoder parameters train: all | none | norms_biases | last:N (last N blocks).
    trainable: str = "all"
    train_head: bool = False
    eval_every: int = Field(default=50, gt=0)
    eval_batch_size: int = Field(default=128, gt=0)
    # Run the frozen prefix once per image and train the trainable suffix on its cached
    # output (needs trainable: last:N and no augmentation). "disk" shares the cache across
    # runs in feature_cache_dir (default: <output_dir>/feature_cache).
    feature_cache: Literal["off", "memory", "disk"] = "off"
    feature_cache_dir: Path | None = None
    feature_cache_dtype: Literal["float32", "float16"] = "float32"
    # Save a resumable checkpoint every N steps (0 = never) under <output_dir>/checkpoints;
    # a rerun of an interrupted experiment continues from it.
    checkpoint_every: int = Field(default=0, ge=0)
    # auto = the first GPU when torch sees one, else the CPU; or cpu | cuda | cuda:N.
    device: str = "auto"
    # Autocast precision of forward passes; weights, AdamW states and averages stay fp32.
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    # Where HAM's historical averages live: with the models, or on the CPU for small GPUs.
    history_device: Literal["same", "cpu"] = "same"
    # Seconds between progress lines when stderr is not a terminal (0 = every step).
    log_every_s: float = Field(default=30.0, ge=0.0)

    @field_validator("device")
    @classmethod
    def _device_spec(cls, value: str) -> str:
        if not DEVICE_PATTERN.match(value):
            raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {value!r}")
        return value

    @field_validator("trainable")
    @classmethod
    def _trainable_spec(cls, value: str) -> str:
        if not TRAINABLE_PATTERN.match(value):
            raise ValueError(f"trainable must be all, none, norms_biases or last:N, got {value!r}")
        return value


# Methods that need data besides the models. The `merge` experiment method feeds these
# hyperparameters from the cell (methods/merge.py), so a `merges:` entry may not set them:
# RegMean's Gram matrices and Fisher's diagonals from each source model's own training split,
# greedy soup's evaluation (and the models' own scores) on the sources' validation splits.
FED_HPARAMS: dict[str, tuple[str, ...]] = {"regmean": ("grams",), "fisher": ("fishers",),
                                           "greedy_soup": ("evaluate", "scores")}
MERGES_NEEDING_DATA = tuple(FED_HPARAMS)
# Stand-ins for the fed values, so the rest of an entry's hparams is checked at load time.
_FED_STAND_INS: dict[str, Any] = {"grams": [], "fishers": [], "evaluate": lambda state: 0.0}


class MergeSpec(StrictModel):
    """One merge of the single-source models: a registered method and its hyperparameters.

    `hparams` are the merge function's own keyword arguments. regmean and fisher also take
    `batches` (how many batches of each source's training split their statistics come from)
    and fisher `fisher_labels` ("model": the true Fisher, labels sampled from the model;
    "true": the empirical Fisher, the dataset labels).
    """

    method: str
    hparams: dict[str, Any] = Field(default_factory=dict)
    # Row name suffix (merge:<label>); defaults to the method name.
    label: str | None = None
    # regmean / fisher: batches of train.batch_size images of each source's training split.
    batches: int = Field(default=20, gt=0)
    fisher_labels: Literal["model", "true"] = "model"

    @field_validator("method")
    @classmethod
    def _registered(cls, value: str) -> str:
        if value not in available():
            raise ValueError(f"unknown merge method {value!r}; available: {', '.join(available())}")
        return value

    @model_validator(mode="after")
    def _hparams_accepted(self) -> "MergeSpec":
        fed = FED_HPARAMS.get(self.method, ())
        given = sorted(set(fed) & set(self.hparams))
        if given:
            raise ValueError(f"{self.method}: hparams {', '.join(given)} are fed by the `merge` experiment method "
                             "from the cell's data; remove them")
        if "batches" in self.model_fields_set and self.method not in ("regmean", "fisher"):
            raise ValueError(f"batches applies to regmean and fisher (their data statistics), not {self.method}")
        if "fisher_labels" in self.model_fields_set and self.method != "fisher":
            raise ValueError(f"fisher_labels applies to fisher only, not {self.method}")
        # Caught here, not after hours of training when the merge finally runs.
        get_method(self.method).check_hparams({**self.hparams, **{k: _FED_STAND_INS[k] for k in fed
                                                                  if k in _FED_STAND_INS}})
        return self

    @model_serializer(mode="wrap")
    def _without_unset_statistics(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # batches and fisher_labels came after results existed: at their defaults they stay out
        # of dumps, so the experiment keys (hashes of the dumped config) of older runs still match.
        data = handler(self)
        for name in ("batches", "fisher_labels"):
            if name in data and getattr(self, name) == type(self).model_fields[name].default:
                data.pop(name)
        return data

    @property
    def name(self) -> str:
        return self.label or self.method


def ham_train(train: TrainConfig, ham: HamConfig) -> TrainConfig:
    """The fine-tuning settings HAM trains under: `train`'s, with HAM's own step budget and
    evaluation cadence where it has them."""
    own = {name: value for name, value in (("steps", ham.steps), ("eval_every", ham.eval_every)) if value is not None}
    return train.model_copy(update=own) if own else train


class HamVariant(StrictModel):
    """A HAM ablation or tuning point: `set` overrides fields of the experiment's `ham` section.

    Variants that change only how the trained models are merged (merge_method, merge_hparams,
    merge_scope, or historical: none = merge the best checkpoints) reuse HAM's training in the
    same cell instead of training again; the others train their own N_S models.
    """

    label: str = Field(pattern=r"^[A-Za-z0-9_.+=-]+$")
    set: dict[str, Any] = Field(default_factory=dict)
    # Run only for these trial seeds (None = every seed): costly sensitivity points on one seed.
    seeds: list[int] | None = None
    # A tuning point of HAM, not an ablation: reports choose among `ham` and its tuning points by
    # source validation (as across sweep jobs) and show the winner as the `ham` row.
    tuning: bool = False

    def applies_to(self, seed: int) -> bool:
        """Whether this variant runs in a cell of trial seed `seed`."""
        return self.seeds is None or seed in self.seeds


class ExperimentConfig(StrictModel):
    """One leave-one-domain-out experiment: data, backbone, training and the methods to run."""

    name: str = "experiment"
    output_dir: Path = Path("runs/experiment")
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    data: DataConfig = Field(default_factory=DataConfig)
    backbone: BackboneConfig = Field(default_factory=BackboneConfig)
    probe: ProbeConfig = Field(default_factory=ProbeConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    ham: HamConfig = Field(default_factory=HamConfig)
    # Experiment methods to run, by registered name; validate_config(methods=...) checks them
    # against the registry, which lives above this package.
    methods: list[str] = Field(
        default_factory=lambda: ["zero_shot", "erm", "single_source", "merge"], min_length=1
    )
    # Merges of the single-source models run by method "merge" (over the trained tensors only).
    merges: list[MergeSpec] = Field(default_factory=lambda: [MergeSpec(method="average")], min_length=1)
    # Rows ham:<label> of method "ham_variants" (ablations, tuning points), each a HamConfig
    # made of `ham` plus the variant's overrides.
    ham_variants: list[HamVariant] = Field(default_factory=list)
    # Which variants method "ham_variants" runs: all, only those reusing HAM's training (free:
    # a merge and an evaluation each) plus HAM's tuning points, or only the other ones.
    ham_variant_runs: Literal["all", "reuse", "train"] = "all"
    # HAM's tuning points that train their own models (λ) run on these seeds only; every other
    # seed trains just the point that won there (best mean source-validation accuracy, per held-out
    # domain) and picks among that training's merge-time points (r) itself. None: every seed tunes.
    ham_tuning_seeds: list[int] | None = Field(default=None, min_length=1)
    # The gating merge of Ye et al. (experiment method "gating"): gate, m values, bases.
    gating: GatingConfig = Field(default_factory=GatingConfig)
    # The weight-averaging DG methods: ERM + MA, SWAD, DiWA (config/weight_averaging.py).
    ma: MAConfig = Field(default_factory=MAConfig)
    swad: SwadConfig = Field(default_factory=SwadConfig)
    diwa: DiwaConfig = Field(default_factory=DiwaConfig)
    # Multi-task instead of leave-one-domain-out: cells are task combinations (config/tasks.py).
    tasks: TasksConfig | None = None
    # Save every trained model (safetensors, with its config in the metadata) under output_dir.
    save_models: bool = True

    @field_validator("methods")
    @classmethod
    def _no_repeats(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError(f"methods are listed twice: {value}")
        return value

    @field_validator("methods")
    @classmethod
    def _registered_methods(cls, value: list[str], info: ValidationInfo) -> list[str]:
        registered: Collection[str] | None = (info.context or {}).get(METHODS_CONTEXT)
        if registered is None:  # no registry given (e.g. on assignment): nothing to check against
            return value
        unknown = [name for name in value if name not in registered]
        if unknown:
            names = sorted(registered) if isinstance(registered, (set, frozenset)) else list(registered)
            what = "method" if len(unknown) == 1 else "methods"
            detail = (f"unknown experiment {what} {', '.join(map(repr, unknown))}; "
                      f"registered: {', '.join(names)}")
            # A custom error keeps the message as written (no "Value error, " prefix).
            raise PydanticCustomError("unknown_experiment_method", "{detail}", {"detail": detail})
        return value

    @field_validator("ham_tuning_seeds")
    @classmethod
    def _unique_tuning_seeds(cls, value: list[int] | None) -> list[int] | None:
        if value is not None and len(set(value)) != len(value):
            raise ValueError(f"ham_tuning_seeds repeat a seed: {value}")
        return value

    @model_validator(mode="after")
    def _variants_valid(self) -> "ExperimentConfig":
        labels = [v.label for v in self.ham_variants]
        if len(set(labels)) != len(labels):
            raise ValueError(f"ham_variants labels repeat: {labels}")
        for variant in self.ham_variants:
            try:
                self.variant_config(variant)
            except ValueError as err:
                raise ValueError(f"ham_variants[{variant.label}]: {err}") from None
        return self

    def variant_config(self, variant: HamVariant) -> HamConfig:
        """The full HamConfig of one variant: `ham` with the variant's overrides applied."""
        return HamConfig(**{**self.ham.model_dump(), **variant.set})

    @field_validator("merges")
    @classmethod
    def _unique_merge_names(cls, value: list[MergeSpec]) -> list[MergeSpec]:
        names = [spec.name for spec in value]
        if len(set(names)) != len(names):
            raise ValueError(f"merge names repeat ({names}); give repeats a distinct label")
        return value
