"""A procedurally generated multi-domain shapes dataset for the CPU demo and the tests.

The classes are shapes (circle, square, triangle, cross, star) drawn with random position,
scale and rotation; each domain draws them in its own style, so the domain shift is real
(colour, texture, line vs fill statistics all change) while the class stays the shape's
outline, which a small CNN learns across styles. The "pretrain" style goes into its own
dataset so the demo's θ0 never sees an evaluation domain.

Images are written as PNGs in the DomainBed layout and are a pure function of
(seed, style, class, image number): the same call writes identical files on any machine.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from dgmerge.data.splits import seed_hash

SHAPES = ("circle", "cross", "square", "star", "triangle")
DOMAIN_STYLES = ("solid", "outline", "noisy", "cartoon")
PRETRAIN_STYLE = "pretrain"

# Drawing at 2× and downsampling gives anti-aliased edges without per-pixel work.
_SUPERSAMPLE = 2

Point = tuple[float, float]


def _polygon(shape: str, cx: float, cy: float, r: float, angle: float) -> list[Point]:
    if shape == "square":
        radii, n = [r * 0.9], 4
    elif shape == "triangle":
        radii, n = [r], 3
    elif shape == "star":
        radii, n = [r, r * 0.45], 10
    elif shape == "circle":
        radii, n = [r * 0.85], 48
    elif shape == "cross":
        # A plus sign: 12 corners at arm half-width w and arm length r.
        w = r * 0.33
        base = [(w, r), (w, w), (r, w), (r, -w), (w, -w), (w, -r), (-w, -r), (-w, -w), (-r, -w), (-r, w),
                (-w, w), (-w, r)]
        c, s = math.cos(angle), math.sin(angle)
        return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in base]
    else:
        raise ValueError(f"unknown shape {shape!r}; shapes: {', '.join(SHAPES)}")
    points = []
    for i in range(n):
        theta = angle + 2 * math.pi * i / n - math.pi / 2
        rad = radii[i % len(radii)]
        points.append((cx + rad * math.cos(theta), cy + rad * math.sin(theta)))
    return points


def _color(rng: np.random.Generator, low: int, high: int) -> tuple[int, int, int]:
    return tuple(int(v) for v in rng.integers(low, high, size=3))  # type: ignore[return-value]


def _saturated(rng: np.random.Generator) -> tuple[int, int, int]:
    # One strong channel, one weak: vivid colours that stand out on light backgrounds.
    rgb = rng.integers(0, 120, size=3)
    rgb[rng.integers(3)] = rng.integers(170, 256)
    return tuple(int(v) for v in rgb)  # type: ignore[return-value]


def _noise_texture(rng: np.random.Generator, size: int, base: np.ndarray, amp: float) -> np.ndarray:
    # Low-frequency colour blobs (upsampled coarse noise) plus pixel noise: a cluttered scene.
    coarse = rng.normal(0, amp, size=(6, 6, 3)).astype(np.float32)
    blobs = np.asarray(Image.fromarray(np.uint8(np.clip(coarse + 128, 0, 255))).resize(
        (size, size), Image.BICUBIC), dtype=np.float32) - 128
    fine = rng.normal(0, amp * 0.6, size=(size, size, 3))
    return np.clip(base + blobs + fine, 0, 255)


def _pattern(rng: np.random.Generator, size: int) -> Image.Image:
    # Pastel stripes or checks at a random angle/period: the cartoon domain's wallpaper.
    a, b = np.array(_color(rng, 190, 256)), np.array(_color(rng, 160, 230))
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    theta = rng.uniform(0, math.pi)
    period = rng.uniform(size / 10, size / 5)
    u = xx * math.cos(theta) + yy * math.sin(theta)
    if rng.random() < 0.5:
        mask = (u // period) % 2 == 0
    else:
        v = -xx * math.sin(theta) + yy * math.cos(theta)
        mask = ((u // period) + (v // period)) % 2 == 0
    return Image.fromarray(np.uint8(np.where(mask[..., None], a, b)))


def _draw(style: str, shape: str, rng: np.random.Generator, size: int) -> Image.Image:
    big = size * _SUPERSAMPLE
    cx, cy = rng.uniform(0.35, 0.65, size=2) * big
    r = rng.uniform(0.22, 0.34) * big
    angle = rng.uniform(0, 2 * math.pi)
    poly = _polygon(shape, cx, cy, r, angle)
    line = _SUPERSAMPLE
    if style == "solid":
        image = Image.new("RGB", (big, big), _color(rng, 200, 256))
        ImageDraw.Draw(image).polygon(poly, fill=_saturated(rng))
    elif style == "outline":
        image = Image.new("RGB", (big, big), _color(rng, 235, 256))
        draw = ImageDraw.Draw(image)
        ink = _color(rng, 0, 70)
        # Two slightly offset strokes: the uneven line of a pencil sketch.
        for dx, dy in ((0.0, 0.0), tuple(rng.uniform(-1.5, 1.5, size=2) * line)):
            draw.line([(x + dx, y + dy) for x, y in poly + poly[:1]], fill=ink, width=line)
    elif style == "noisy":
        base = np.array(_color(rng, 60, 200), dtype=np.float32)
        image = Image.fromarray(np.uint8(_noise_texture(rng, big, base, 32)))
        # Fill roughly opposite the background colour, so clutter hides the shape rarely.
        fill = np.clip(255 - base + rng.normal(0, 30, size=3), 0, 255)
        ImageDraw.Draw(image).polygon(poly, fill=tuple(int(v) for v in fill))
    elif style == "cartoon":
        image = _pattern(rng, big)
        ImageDraw.Draw(image).polygon(poly, fill=_color(rng, 170, 256), outline=(0, 0, 0), width=3 * line)
    elif style == PRETRAIN_STYLE:
        # Grey gradient background (sometimes cluttered), two-tone fill, medium border: none of
        # the test styles, but varied enough to pretrain shape features on.
        grad = np.linspace(rng.uniform(40, 120), rng.uniform(140, 230), big, dtype=np.float32)
        grad = np.repeat(np.repeat(grad[None, :, None], big, 0), 3, 2)
        grad = np.rot90(grad, k=int(rng.integers(4)))
        if rng.random() < 0.5:
            # Some clutter, so θ0's features do not break on the textured test styles.
            grad = _noise_texture(rng, big, grad, rng.uniform(5, 35))
        image = Image.fromarray(np.uint8(grad))
        draw = ImageDraw.Draw(image)
        # Region, contour and both: pretraining sees every cue the test styles rely on.
        look = rng.integers(4)
        if look == 0:
            draw.polygon(poly, fill=_color(rng, 0, 256))
        elif look == 1:
            draw.line(poly + poly[:1], fill=_color(rng, 0, 256), width=int(rng.integers(1, 4)) * line)
        else:
            draw.polygon(poly, fill=_color(rng, 0, 256), outline=_color(rng, 0, 256),
                         width=int(rng.integers(1, 4)) * line)
            if look == 3:
                draw.polygon(_polygon(shape, cx, cy, r * 0.5, angle), fill=_color(rng, 0, 256))
    else:
        raise ValueError(f"unknown style {style!r}; styles: {', '.join((*DOMAIN_STYLES, PRETRAIN_STYLE))}")
    image = image.resize((size, size), Image.LANCZOS)
    if style == "noisy":
        # Grain over the shape too, so its edges are not perfectly clean.
        pixels = np.asarray(image, dtype=np.float32) + rng.normal(0, 8, size=(size, size, 3))
        image = Image.fromarray(np.uint8(np.clip(pixels, 0, 255)))
    elif style == "outline" and rng.random() < 0.5:
        image = image.filter(ImageFilter.SMOOTH)
    return image


def render(style: str, shape: str, index: int, size: int = 64, seed: int = 0) -> Image.Image:
    """One image of `shape` in `style`; a pure function of (seed, style, shape, index)."""
    rng = np.random.default_rng(seed_hash("synthetic", seed, style, shape, index))
    return _draw(style, shape, rng, size)


def generate_synthetic(root: Path, name: str = "Shapes", domains: Sequence[str] = DOMAIN_STYLES,
                       classes: Sequence[str] = SHAPES, images_per_class: int = 40, size: int = 64,
                       seed: int = 0, overwrite: bool = False,
                       on_image: Callable[[int, int], None] | None = None) -> Path:
    """Write `root/name/<domain>/<class>/NNNN.png` and return `root/name`.

    Each domain name is a style (solid, outline, noisy, cartoon, pretrain). The dataset is
    built in a temporary folder and renamed into place, so an interrupted run never leaves a
    half-written dataset that a later run would take as complete. `on_image(done, total)`
    reports progress. An existing dataset is an error unless `overwrite`.
    """
    styles = (*DOMAIN_STYLES, PRETRAIN_STYLE)
    unknown = [d for d in domains if d not in styles]
    if unknown:
        raise ValueError(f"unknown synthetic domain(s) {unknown}; styles: {', '.join(styles)}")
    bad_classes = [c for c in classes if c not in SHAPES]
    if bad_classes:
        raise ValueError(f"unknown synthetic class(es) {bad_classes}; shapes: {', '.join(SHAPES)}")
    if images_per_class < 1 or size < 8:
        raise ValueError(f"need images_per_class >= 1 and size >= 8, got {images_per_class}, {size}")
    root = Path(root)
    target = root / name
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} already exists; pass overwrite=True to regenerate it")
    root.mkdir(parents=True, exist_ok=True)
    total, done = len(domains) * len(classes) * images_per_class, 0
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=root))
    try:
        for domain in domains:
            for shape in classes:
                folder = staging / domain / shape
                folder.mkdir(parents=True)
                for i in range(images_per_class):
                    # compress_level=1: the files are tiny either way and writing stays fast.
                    render(domain, shape, i, size, seed).save(folder / f"{i:04d}.png", compress_level=1)
                    done += 1
                    if on_image is not None:
                        on_image(done, total)
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target
