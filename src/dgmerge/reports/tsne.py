"""t-SNE of encoder features of two saved models, coloured by class and by domain (HAM Fig. 4)."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from dgmerge.data.imagefolder import ImageDataset, scan_domains
from dgmerge.reports.figures import Plotted, check_writable, pyplot, save_figure


@dataclass
class Embedding:
    """2-D t-SNE points of one model's features, with the class and domain of each image."""

    name: str
    points: np.ndarray
    labels: np.ndarray
    domains: np.ndarray


def _tsne_class() -> Any:
    try:
        from sklearn.manifold import TSNE
    except ImportError as exc:  # scikit-learn is an optional (test) extra
        raise ImportError("t-SNE figures need scikit-learn: pip install scikit-learn") from exc
    return TSNE


def sample_images(data_dir: Path, domains: Sequence[str] | None = None, max_images: int = 100,
                  seed: int = 0) -> tuple[list[tuple[Path, int]], list[str], tuple[str, ...]]:
    """At most `max_images` images per domain, drawn at random with `seed` (the same on every call).

    Returns (samples, domain of each sample, class names).
    """
    index = scan_domains(Path(data_dir))
    chosen = list(domains or index.domains)
    unknown = [d for d in chosen if d not in index.domains]
    if unknown:
        raise ValueError(f"domains {unknown} are not in {data_dir} (domains: {', '.join(index.domains)})")
    rng = np.random.default_rng(seed)
    samples, sample_domains = [], []
    for domain in chosen:
        pool = index.samples[domain]
        picked = sorted(rng.choice(len(pool), size=min(max_images, len(pool)), replace=False))
        samples += [pool[i] for i in picked]
        sample_domains += [domain] * len(picked)
    return samples, sample_domains, index.classes


@torch.no_grad()
def encoder_features(model: torch.nn.Module, samples: Sequence[tuple[Path, int]], transform: Any,
                     batch_size: int = 64) -> np.ndarray:
    """model.encoder(images) on the model's eval transform, flattened to (N, D)."""
    model.eval()
    loader = DataLoader(ImageDataset(list(samples), transform), batch_size=batch_size, shuffle=False)
    feats = [model.encoder(images).flatten(1).float() for images, _ in loader]
    return torch.cat(feats).numpy()


def embed(features: np.ndarray, seed: int = 0, perplexity: float = 30.0, max_iter: int = 1000,
          threads: int | None = 1) -> np.ndarray:
    """2-D t-SNE of `features`; the perplexity is capped below the sample count, as TSNE requires.

    `threads` caps OpenMP threads (None = sklearn's default): on a loaded shared CPU the
    spinning OpenMP workers made a 400-point t-SNE ~8x slower than one thread.
    """
    tsne_cls = _tsne_class()
    n = len(features)
    if n < 3:
        raise ValueError(f"t-SNE needs at least 3 images, got {n}")
    perplexity = min(perplexity, max(1.0, (n - 1) / 3))
    tsne = tsne_cls(n_components=2, perplexity=perplexity, init="pca", random_state=seed,
                    max_iter=max(250, max_iter))
    limits: Any = contextlib.nullcontext()
    if threads is not None:
        from threadpoolctl import threadpool_limits  # a dependency of scikit-learn

        limits = threadpool_limits(limits=threads)
    with limits:
        return tsne.fit_transform(features.astype(np.float32))


def tsne_figure(model_paths: Sequence[Path], data_dir: Path, out: Path, names: Sequence[str] | None = None,
                domains: Sequence[str] | None = None, target_domain: str | None = None,
                max_images: int = 100, seed: int = 0, max_iter: int = 1000, force: bool = False) -> Plotted:
    """t-SNE grid (HAM Fig. 4): one row per saved model, columns coloured by class and by domain.

    Every model sees the same images (at most `max_images` per domain of `data_dir`, source and
    target), each through its own eval transform. `target_domain` is marked in the legend.
    `max_iter` (>= 250) trades t-SNE quality for time.
    `data["embeddings"]` holds one `Embedding` per model.
    """
    from dgmerge.evaluation.saved_models import load_model

    check_writable(out, force)
    _tsne_class()  # fail before loading models and images if scikit-learn is missing
    names = list(names or [Path(p).stem for p in model_paths])
    samples, sample_domains, classes = sample_images(data_dir, domains, max_images, seed)
    labels = np.array([label for _, label in samples])
    domain_arr = np.array(sample_domains)
    embeddings = []
    for name, path in zip(names, model_paths):
        model, meta, transform = load_model(Path(path))
        if list(meta.get("classes", classes)) != list(classes):
            raise ValueError(f"{data_dir} has classes {list(classes)} but {path} was trained on {meta['classes']}")
        points = embed(encoder_features(model, samples, transform), seed, max_iter=max_iter)
        embeddings.append(Embedding(name, points, labels, domain_arr))

    plt = pyplot()
    fig, axes = plt.subplots(len(embeddings), 2, figsize=(11, 5 * len(embeddings)), squeeze=False)
    cmap = plt.get_cmap("tab10")
    domain_names = list(dict.fromkeys(sample_domains))
    for row, emb in zip(axes, embeddings):
        for ax, (kind, groups) in zip(row, (("class", list(range(len(classes)))), ("domain", domain_names))):
            for i, group in enumerate(groups):
                mask = (emb.labels == group) if kind == "class" else (emb.domains == group)
                if not mask.any():
                    continue
                label = classes[group] if kind == "class" else str(group) + (" (target)" if group == target_domain else "")
                ax.scatter(emb.points[mask, 0], emb.points[mask, 1], s=8, color=cmap(i % 10), label=label,
                           marker="x" if kind == "domain" and group == target_domain else "o")
            ax.set_title(f"{emb.name}: coloured by {kind}")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.legend(fontsize="small", markerscale=2)
    return Plotted(save_figure(fig, out, force), fig, {"embeddings": embeddings})


__all__ = ["Embedding", "embed", "encoder_features", "sample_images", "tsne_figure"]
