"""Typed, validated experiment configs.

Every config is a pydantic model that forbids unknown keys, so a typo in a YAML file fails
before any work starts, with the field's name in the message.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from dgmerge.training.ham_config import HamConfig

TRAINABLE_PATTERN = re.compile(r"^(all|none|norms_biases|last:[1-9][0-9]*)$")


class StrictModel(BaseModel):
    """Base for configs: unknown keys are errors, values are validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class BackboneConfig(StrictModel):
    """Which image encoder to build and where its weights come from."""

    kind: Literal["open_clip", "hf_clip", "timm", "tiny_cnn"] = "timm"
    # open_clip: model name (ViT-B-16); hf_clip: hub id or local directory;
    # timm: model name (mobilenetv2_100); tiny_cnn: width tag ("tiny").
    name: str = "mobilenetv2_100"
    # open_clip: pretrained tag (openai) or a local checkpoint file; ignored otherwise.
    pretrained: str | None = None
    # A local weights file (timm / tiny_cnn state dict, open_clip checkpoint); overrides hubs.
    # timm: pretrained="hub" downloads timm's own weights (needs internet).
    checkpoint: Path | None = None
    # Extra keyword arguments for the model constructor (e.g. timm's pad_type="same").
    model_kwargs: dict[str, Any] = Field(default_factory=dict)
    # Prompt templates for CLIP zero-shot heads; "{}" is replaced by the class name.
    templates: list[str] = Field(default_factory=lambda: ["a photo of a {}."])
    # Input normalisation override (mean, std), e.g. [0.5]*3 for TF-converted weights.
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    image_size: int | None = Field(default=None, gt=0)

    @field_validator("templates")
    @classmethod
    def _templates_have_slot(cls, value: list[str]) -> list[str]:
        for template in value:
            if "{}" not in template:
                raise ValueError(f"prompt template {template!r} has no '{{}}' slot for the class name")
        return value


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

    @field_validator("trainable")
    @classmethod
    def _trainable_spec(cls, value: str) -> str:
        if not TRAINABLE_PATTERN.match(value):
            raise ValueError(f"trainable must be all, none, norms_biases or last:N, got {value!r}")
        return value


Method = Literal["zero_shot", "erm", "single_source", "merge", "ham", "ham_variants"]

# Methods that need data statistics or an evaluation callback, not just the models.
MERGES_NEEDING_DATA = ("regmean", "fisher", "greedy_soup")


class MergeSpec(StrictModel):
    """One merge of the single-source models: a registered method and its hyperparameters."""

    method: str
    hparams: dict[str, Any] = Field(default_factory=dict)
    # Row name suffix (merge:<label>); defaults to the method name.
    label: str | None = None

    @field_validator("method")
    @classmethod
    def _registered(cls, value: str) -> str:
        from dgmerge.merging import available

        if value not in available():
            raise ValueError(f"unknown merge method {value!r}; available: {', '.join(available())}")
        if value in MERGES_NEEDING_DATA:
            raise ValueError(f"{value} needs data statistics or an evaluation callback; "
                             "use the dgmerge.merging API for it")
        return value

    @model_validator(mode="after")
    def _hparams_accepted(self) -> "MergeSpec":
        # Caught here, not after hours of training when the merge finally runs.
        from dgmerge.merging import get_method

        get_method(self.method).check_hparams(self.hparams)
        return self

    @property
    def name(self) -> str:
        return self.label or self.method


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
    methods: list[Method] = Field(
        default_factory=lambda: ["zero_shot", "erm", "single_source", "merge"], min_length=1
    )
    # Merges of the single-source models run by method "merge" (over the trained tensors only).
    merges: list[MergeSpec] = Field(default_factory=lambda: [MergeSpec(method="average")], min_length=1)
    # Rows ham:<label> of method "ham_variants" (ablations, tuning points), each a HamConfig
    # made of `ham` plus the variant's overrides.
    ham_variants: list[HamVariant] = Field(default_factory=list)
    # Which variants method "ham_variants" runs: all, only those reusing HAM's training (free:
    # a merge and an evaluation each), or only those that train their own models.
    ham_variant_runs: Literal["all", "reuse", "train"] = "all"
    # Save every trained model (safetensors, with its config in the metadata) under output_dir.
    save_models: bool = True

    @field_validator("methods")
    @classmethod
    def _no_repeats(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError(f"methods are listed twice: {value}")
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


class ConfigError(ValueError):
    """A config file that cannot be used; the message names the file and the field."""


SHIPPED_CONFIGS = Path(__file__).resolve().parent / "configs"


def resolve_config_path(name_or_path: Path | str) -> Path:
    """A config file path, or the name of a config shipped with dgmerge (e.g. pacs_mobilenetv2)."""
    path = Path(name_or_path)
    if path.exists():
        return path
    shipped = SHIPPED_CONFIGS / f"{path.name.removesuffix('.yaml')}.yaml"
    if shipped.is_file() and path.parent == Path("."):
        return shipped
    names = ", ".join(sorted(p.stem for p in SHIPPED_CONFIGS.glob("*.yaml")))
    raise ConfigError(f"no config file {path} (shipped configs: {names})")


def read_yaml_mapping(path: Path) -> dict[str, Any]:
    """The top-level mapping of a YAML file; ConfigError naming the file otherwise."""
    try:
        raw = yaml.safe_load(Path(path).read_text()) or {}
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping of fields, got {type(raw).__name__}")
    return raw


def load_config(path: Path, overrides: dict[str, Any] | None = None) -> ExperimentConfig:
    """Read a YAML experiment config, apply dotted overrides, and validate it.

    Raises ConfigError naming the file and every bad field, before any work is done.
    """
    path = resolve_config_path(path)
    raw = read_yaml_mapping(path)
    for dotted, value in (overrides or {}).items():
        set_dotted(raw, dotted, value)
    return validate_config(raw, source=str(path))


def validate_config(raw: dict[str, Any], source: str = "config") -> ExperimentConfig:
    """Validate a plain dict as an ExperimentConfig, with field names in the error."""
    try:
        return ExperimentConfig.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(f"{source}: invalid config: {problems}") from exc


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """Turn ['train.lr=1e-4', 'seeds=[0,1]'] into {'train.lr': 1e-4, 'seeds': [0, 1]} (YAML values)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"override {pair!r} must look like key=value (e.g. train.lr=1e-4)")
        key, value = pair.split("=", 1)
        out[key.strip()] = yaml.safe_load(value)
    return out


def set_dotted(raw: dict[str, Any], dotted: str, value: Any) -> None:
    """Set raw["a"]["b"] = value for dotted="a.b", creating sections as needed."""
    node = raw
    parts = dotted.split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {dotted!r}: {part!r} is not a section")
        node = child
    node[parts[-1]] = value
