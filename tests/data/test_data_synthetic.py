"""The generated shapes dataset: DomainBed layout, determinism, styles that differ."""

import hashlib

import numpy as np
import pytest
from PIL import Image

from dgmerge.data.imagefolder import scan_domains
from dgmerge.data.synthetic import DOMAIN_STYLES, SHAPES, generate_synthetic, render


def _digest(folder):
    return {str(p.relative_to(folder)): hashlib.md5(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*.png"))}


def test_layout_counts_and_loader_compatibility(tmp_path):
    out = generate_synthetic(tmp_path, name="Shapes", domains=("solid", "outline"), classes=("circle", "star"),
                             images_per_class=3, size=32)
    assert out == tmp_path / "Shapes"
    index = scan_domains(out)
    assert index.domains == ("outline", "solid") and index.classes == ("circle", "star")
    assert {d: len(s) for d, s in index.samples.items()} == {"outline": 6, "solid": 6}
    with Image.open(out / "solid" / "star" / "0002.png") as image:
        assert image.size == (32, 32) and image.mode == "RGB"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Shapes"]  # no staging folder left


def test_same_seed_same_bytes_other_seed_other_images(tmp_path):
    a = generate_synthetic(tmp_path / "a", domains=("noisy", "cartoon"), images_per_class=2)
    b = generate_synthetic(tmp_path / "b", domains=("noisy", "cartoon"), images_per_class=2)
    c = generate_synthetic(tmp_path / "c", domains=("noisy", "cartoon"), images_per_class=2, seed=1)
    assert _digest(a) == _digest(b)
    assert _digest(a).keys() == _digest(c).keys() and _digest(a) != _digest(c)
    # An image does not depend on which other domains were generated alongside it.
    d = generate_synthetic(tmp_path / "d", domains=("cartoon",), images_per_class=2)
    assert _digest(d).items() <= {k: v for k, v in _digest(a).items() if k.startswith("cartoon")}.items()


def test_existing_dataset_needs_overwrite(tmp_path):
    generate_synthetic(tmp_path, domains=("solid",), images_per_class=1)
    with pytest.raises(FileExistsError, match="overwrite"):
        generate_synthetic(tmp_path, domains=("solid",), images_per_class=1)
    generate_synthetic(tmp_path, domains=("outline",), images_per_class=1, overwrite=True)
    assert [p.name for p in (tmp_path / "Shapes").iterdir()] == ["outline"]


def test_unknown_style_is_rejected():
    with pytest.raises(ValueError, match="watercolor"):
        generate_synthetic("unused", domains=("watercolor",))


def test_domains_look_different_and_shapes_are_drawn():
    means = {}
    for style in (*DOMAIN_STYLES, "pretrain"):
        pixels = np.stack([np.asarray(render(style, shape, i), dtype=np.float32)
                           for shape in SHAPES for i in range(4)])
        # Brightness, edge density (texture) and colourfulness: a crude style signature.
        means[style] = np.array([pixels.mean(), np.abs(np.diff(pixels, axis=2)).mean(), pixels.std(axis=3).mean()])
        # Every image has a visible figure: it is not a flat field.
        assert pixels.reshape(len(pixels), -1).std(axis=1).min() > 10
    # Style statistics differ between every pair of domains.
    stats = list(means.values())
    assert all(np.abs(s - t).sum() > 8 for i, s in enumerate(stats) for t in stats[i + 1:])


def test_generation_writes_every_image(tmp_path):
    # Speed is the demo's benchmark (BENCHMARKS.md), not a timed test: shared cores flake.
    generate_synthetic(tmp_path, images_per_class=20)  # 4 domains x 5 classes x 20 = 400 images
    assert len([p for p in tmp_path.rglob("*") if p.suffix in (".png", ".jpg")]) == 400
