"""Reload a saved model and score it on the domains of a dataset (`dgmerge evaluate`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from dgmerge.config import BackboneConfig
from dgmerge.data.imagefolder import ImageDataset, scan_domains
from dgmerge.files import read_meta, read_state_dict
from dgmerge.models.accuracy import accuracy
from dgmerge.models import load_backbone
from dgmerge.models.classifier import Classifier
from dgmerge.models.heads import LinearHead, ZeroShotHead


def load_model(path: Path, like: Path | None = None) -> tuple[Classifier, dict[str, Any], Any]:
    """Rebuild a Classifier from a safetensors file written by dgmerge.

    The architecture comes from the file's metadata (or from `like`'s, for a bare merged
    state dict); the weights come from the file itself, so no hub or θ0 file is needed.
    A gating merge (`dgmerge merge --method gating`) comes back as a GatedClassifier.
    Returns (model, metadata, eval transform).
    """
    meta = read_meta(like or path)
    if meta.get("method") == "gating":
        from dgmerge.gating.files import load_gated

        gated, transform = load_gated(Path(path), meta)
        return gated, meta, transform  # type: ignore[return-value]
    state = read_state_dict(path)
    cfg = BackboneConfig.model_validate(meta["backbone"])
    # Weights are all in `state`: build the bare architecture, never download.
    arch = cfg.model_copy(update={"checkpoint": None, "pretrained": None})
    backbone = load_backbone(arch)
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
        raise ValueError(f"{path} does not fit the {cfg.kind}:{cfg.name} architecture of its metadata: "
                         f"missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}")
    transform = backbone.preprocessing()
    return model.eval(), meta, transform


def score_model(path: Path, data_dir: Path, domains: list[str] | None = None, like: Path | None = None,
                batch_size: int = 64, max_images: int | None = None) -> dict[str, tuple[int, float]]:
    """Accuracy of the saved model on each domain of `data_dir`: {domain: (images, accuracy)}."""
    model, meta, transform = load_model(Path(path), like)
    index = scan_domains(Path(data_dir))
    relabel = None
    if meta.get("method") == "gating" and set(index.classes) <= set(meta["classes"]):
        # A gated model predicts in the union of its tasks' label spaces: map labels by class name.
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
        data = ImageDataset(samples, transform)
        if relabel is not None:
            from dgmerge.gating.files import Relabelled

            data = Relabelled(data, relabel)
        scores[domain] = (len(samples), accuracy(model, data, batch_size, desc=f"score {domain}"))
    return scores
