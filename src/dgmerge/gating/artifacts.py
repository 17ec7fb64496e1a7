"""Files the gating benchmarks write and `dgmerge merge --method gating` reads: experts, gates, Grams."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from dgmerge.config import BackboneConfig
from dgmerge.evaluation.saved_models import backbone_of
from dgmerge.files import META_KEY, ModelFileError, read_meta, read_state_dict, save_model, save_state_dict
from dgmerge.gating.gate import Gate
from dgmerge.models.stages import Cut


def save_gate(path: Path, gate: Gate, backbone_cfg: BackboneConfig, tasks: list[str], fraction: float) -> Path:
    """The gate with what rebuilding it needs: backbone, cut, task order, data fraction."""
    meta = {"kind": "gate", "backbone": backbone_cfg.model_dump(mode="json"), "tasks": tasks,
            "cut": gate.cut.block if gate.cut else None, "image_size": gate.cut.image_size if gate.cut else None,
            "feature_dim": gate.linear.in_features, "fraction": fraction}
    return save_model(path, gate, meta)


def gate_skeleton(meta: dict[str, Any], n_tasks: int) -> Gate:
    """An untrained gate of the architecture, cut and width a file's metadata names (weights come from the file)."""
    cut = Cut(meta["cut"], int(meta["image_size"])) if meta.get("cut") else None
    return Gate(backbone_of(meta).encoder, int(meta["feature_dim"]), n_tasks, cut)


def load_gate(path: Path) -> tuple[Gate, dict[str, Any]]:
    """A gate written by save_gate (no weights are downloaded: everything is in the file)."""
    meta = read_meta(path)
    if meta.get("kind") != "gate":
        raise ValueError(f"{path} is not a gate file (its metadata kind is {meta.get('kind')!r}); pass the "
                         "gate.safetensors a gating benchmark wrote")
    gate = gate_skeleton(meta, len(meta["tasks"]))
    gate.load_state_dict(read_state_dict(path))
    gate.requires_grad_(False)
    return gate.eval(), meta


def save_grams(path: Path, grams: dict[str, torch.Tensor], task: str) -> Path:
    """One expert's RegMean Gram matrices."""
    return save_state_dict(path, grams, metadata={META_KEY: json.dumps({"kind": "grams", "task": task})}, force=True)


def load_grams(path: Path) -> dict[str, torch.Tensor]:
    """Gram matrices written by save_grams."""
    if not Path(path).is_file():
        raise ModelFileError(path, "no such file", "pass the grams_<task>.safetensors a gating run wrote")
    return read_state_dict(path)
