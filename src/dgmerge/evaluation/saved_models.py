"""Reload a saved model and score it on the domains of a dataset (`dgmerge evaluate`).

A file's metadata names its kind (`"kind"`, default "classifier": encoder + head). Other
kinds register a loader with `register_model_kind` (the gating merge's "gated_classifier"
does, in dgmerge.gating.files), so this module never needs to know them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from dgmerge.config import BackboneConfig, architecture_only
from dgmerge.data.imagefolder import ImageDataset, scan_domains
from dgmerge.device import check_precision, resolve_device
from dgmerge.files import read_meta, read_state_dict
from dgmerge.models import load_backbone
from dgmerge.models.accuracy import accuracy
from dgmerge.models.backbone import Backbone
from dgmerge.models.classifier import Classifier
from dgmerge.models.heads import LinearHead, ZeroShotHead


# (file, its metadata) -> (model in eval mode, its eval transform)
ModelLoader = Callable[[Path, dict[str, Any]], tuple[torch.nn.Module, Any]]
MODEL_KINDS: dict[str, ModelLoader] = {}


def register_model_kind(kind: str, loader: ModelLoader) -> ModelLoader:
    """Let `load_model` rebuild files whose metadata says `"kind": kind` with `loader`."""
    MODEL_KINDS[kind] = loader
    return loader


def load_model(path: Path, like: Path | None = None) -> tuple[torch.nn.Module, dict[str, Any], Any]:
    """Rebuild a model from a safetensors file written by dgmerge.

    The architecture comes from the file's metadata (or from `like`'s, for a bare merged
    state dict); the weights come from the file itself, so no hub or θ0 file is needed.
    Returns (model, metadata, eval transform).
    """
    meta = read_meta(like or path)
    kind = meta.get("kind", "classifier")
    if kind not in MODEL_KINDS:
        raise ValueError(f"{path}: a model of kind {kind!r}, which nothing registered here can load "
                         f"(known: {', '.join(sorted(MODEL_KINDS))})")
    model, transform = MODEL_KINDS[kind](Path(path), meta)
    return model, meta, transform


def backbone_of(meta: dict[str, Any]) -> Backbone:
    """The bare architecture a saved file's metadata names: its recipe, no weights, no download.

    Every weight of a saved model is in its file, so loaders build this and load the file.
    """
    return load_backbone(architecture_only(BackboneConfig.model_validate(meta["backbone"])))


def _load_classifier(path: Path, meta: dict[str, Any]) -> tuple[Classifier, Any]:
    """An encoder + head classifier, the kind `dgmerge run` saves."""
    state = read_state_dict(path)
    backbone = backbone_of(meta)
    if meta.get("head") == "ZeroShotHead":
        head: torch.nn.Module = ZeroShotHead(torch.zeros_like(state["head.class_embeddings"]))
    else:
        weight = state.get("head.linear.weight")
        if weight is None:
            raise ValueError(f"{path}: no head.linear.weight; is this a full dgmerge classifier file?")
        head = LinearHead(weight.shape[1], weight.shape[0])
    model = Classifier(backbone.encoder, head)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{path} does not fit the {backbone.kind}:{backbone.name} architecture of its metadata: "
                         f"missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}")
    return model.eval(), backbone.preprocessing()


register_model_kind("classifier", _load_classifier)


class Relabelled(Dataset):
    """`data` with labels mapped by `mapping` (dataset class index -> model output index)."""

    def __init__(self, data: Dataset, mapping: Sequence[int]):
        self.data = data
        self.mapping = list(mapping)

    def __len__(self) -> int:
        return len(self.data)  # type: ignore[arg-type]

    def __getitem__(self, idx: int) -> tuple[Any, int]:
        x, y = self.data[idx]
        return x, self.mapping[int(y)]


def score_model(path: Path, data_dir: Path, domains: list[str] | None = None, like: Path | None = None,
                batch_size: int = 64, max_images: int | None = None, device: str = "cpu",
                precision: str = "fp32") -> dict[str, tuple[int, float]]:
    """Accuracy of the saved model on each domain of `data_dir`: {domain: (images, accuracy)}.

    The model is scored on `device` (auto | cpu | cuda | cuda:N) with forward passes in `precision`.
    """
    torch_device = resolve_device(device)
    check_precision(precision, torch_device)
    model, meta, transform = load_model(Path(path), like)
    model.to(torch_device)
    index = scan_domains(Path(data_dir))
    relabel = None
    if list(index.classes) != list(meta["classes"]) and set(index.classes) <= set(meta["classes"]):
        # The model predicts in a wider label space (a gated model: the union of its tasks'):
        # map the dataset's labels into it by class name.
        relabel = [list(meta["classes"]).index(c) for c in index.classes]
    elif list(index.classes) != list(meta["classes"]):
        raise ValueError(f"{data_dir} has classes {list(index.classes)} but {path} was trained on "
                         f"{meta['classes']}: the head's outputs would not mean the same labels")
    chosen = domains or list(index.domains)
    unknown = [d for d in chosen if d not in index.domains]
    if unknown:
        raise ValueError(f"domains {unknown} are not in {data_dir} (domains: {', '.join(index.domains)})")
    scores = {}
    for domain in chosen:
        samples = index.samples[domain][:max_images] if max_images else index.samples[domain]
        data: Dataset = ImageDataset(samples, transform)
        if relabel is not None:
            data = Relabelled(data, relabel)
        scores[domain] = (len(samples), accuracy(model, data, batch_size, desc=f"score {domain}", precision=precision))
    return scores
