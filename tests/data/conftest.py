"""Small image trees on disk for the data-layer tests."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import pytest
from PIL import Image

# {domain: {class: number of images}}
Layout = dict[str, dict[str, int]]


def write_tree(dataset_dir: Path, layout: Layout, size: int = 12, ext: str = "png") -> Path:
    """Write tiny solid-colour images in the DomainBed layout; returns `dataset_dir`."""
    for d, (domain, classes) in enumerate(layout.items()):
        for c, (name, count) in enumerate(classes.items()):
            folder = dataset_dir / domain / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                Image.new("RGB", (size, size), (40 * d % 256, 30 * c % 256, 7 * i % 256)).save(folder / f"{i:03d}.{ext}")
    return dataset_dir


@pytest.fixture
def make_tree(tmp_path: Path) -> Callable[..., Path]:
    """make_tree(layout, name="Toy") writes tmp_path/name in the DomainBed layout."""
    def make(layout: Layout, name: str = "Toy", **kwargs) -> Path:
        return write_tree(tmp_path / name, layout, **kwargs)
    return make
