"""Cached frozen-prefix activations as datasets, in memory or on disk.

A cache file is keyed by everything that determines its content (backbone config, cut
block, transform, the exact samples and storage dtype), so it is shared safely across
seeds, methods and test domains, and a changed input never reads a stale file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from dgmerge.device import module_device
from dgmerge.hashing import config_hash
from dgmerge.files import read_state_dict, save_state_dict
from dgmerge.models.stages import Cut, capture
from dgmerge.progress import progress


class ActivationDataset(Dataset):
    """(activation, label) pairs of precomputed prefix outputs; `.samples` names their images."""

    def __init__(self, activations: torch.Tensor, labels: torch.Tensor, samples: list[tuple[Any, int]]):
        if len(activations) != len(labels) or len(labels) != len(samples):
            raise ValueError("activations, labels and samples must have the same length")
        self.activations = activations
        self.labels = labels
        self.samples = samples

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        # Stored in a compact dtype on request; the suffix always computes in float32.
        return self.activations[idx].float(), self.labels[idx]

    def select(self, samples: list[tuple[Any, int]]) -> "ActivationDataset":
        """The rows of `samples` (each must be one of this dataset's), in that order."""
        row = {str(path): i for i, (path, _) in enumerate(self.samples)}
        try:
            index = torch.tensor([row[str(path)] for path, _ in samples], dtype=torch.long)
        except KeyError as exc:
            raise KeyError(f"{exc.args[0]} is not in this activation cache") from None
        return ActivationDataset(self.activations[index], self.labels[index], list(samples))


def cache_key(backbone_cfg: dict[str, Any], cut: Cut, transform: Any, samples: list, dtype: str) -> str:
    """Hash of everything that determines a cache file's content."""
    return config_hash({"backbone": backbone_cfg, "cut": cut.block, "image_size": cut.image_size,
                        "transform": repr(transform), "dtype": dtype,
                        "samples": [(str(path), int(label)) for path, label in samples]})


def cached_activations(encoder: torch.nn.Module, cut: Cut, dataset: Dataset, *, key: str,
                       cache_dir: Path | None, dtype: str = "float32", batch_size: int = 64,
                       desc: str = "caching") -> ActivationDataset:
    """Prefix activations of every item of `dataset` (an ImageDataset), from disk when cached.

    With cache_dir=None the activations live in memory only.
    """
    samples = list(getattr(dataset, "samples"))
    path = Path(cache_dir) / f"{key}.safetensors" if cache_dir is not None else None
    if path is not None and path.is_file():
        stored = read_state_dict(path)
        return ActivationDataset(stored["activations"], stored["labels"], samples)
    torch_dtype = {"float32": torch.float32, "float16": torch.float16}[dtype]
    was_training = encoder.training
    encoder.eval()
    chunks, labels = [], []
    device = module_device(encoder)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, pin_memory=device.type == "cuda")
    for images, targets in progress(loader, desc=desc, total=len(loader)):
        # The prefix runs on the encoder's device; the cache itself lives in host memory.
        chunks.append(capture(encoder, cut, images.to(device, non_blocking=True)).to(torch_dtype).cpu())
        labels.append(torch.as_tensor(targets))
    encoder.train(was_training)
    activations, label_tensor = torch.cat(chunks), torch.cat(labels)
    if path is not None:
        save_state_dict(path, {"activations": activations, "labels": label_tensor}, force=True,
                        metadata={"cut": cut.block, "images": json.dumps(len(samples))})
    return ActivationDataset(activations, label_tensor, samples)
