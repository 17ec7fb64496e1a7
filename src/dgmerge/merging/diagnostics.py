"""Diagnostics of a set of task vectors: per-layer norms, pairwise cosine, sign conflicts, heatmap."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Sequence

import torch

from dgmerge.merging.task_vectors import float_keys, stacked_task_vectors
from dgmerge.merging.validate import StateDict


@dataclass
class TaskVectorReport:
    """Streaming statistics of N task vectors τ_i = θ_i − θ0.

    layer_norms[key][i] = ‖τ_i‖ of that tensor; cosine[i][j] = cos(τ_i, τ_j) over the whole
    model; conflict_rate[key] = fraction of the tensor's entries where some model moves up
    and another moves down (both signs present among non-zero updates); overall_conflict_rate
    over all entries.
    """

    names: list[str]
    layer_norms: dict[str, list[float]] = field(default_factory=dict)
    conflict_rate: dict[str, float] = field(default_factory=dict)
    cosine: list[list[float]] = field(default_factory=list)
    total_norms: list[float] = field(default_factory=list)
    overall_conflict_rate: float = 0.0


def task_vector_report(pretrained: StateDict, finetuned: Sequence[StateDict],
                       names: Sequence[str] | None = None) -> TaskVectorReport:
    """Compute the report tensor by tensor (memory: N × the largest tensor)."""
    n_models = len(finetuned)
    names = list(names) if names is not None else [f"model{i}" for i in range(n_models)]
    report = TaskVectorReport(names=names)
    keys = float_keys(pretrained)
    device = pretrained[keys[0]].device if keys else torch.device("cpu")
    gram = torch.zeros(n_models, n_models, dtype=torch.float64, device=device)
    conflicts = entries = 0
    for key in keys:
        vectors = stacked_task_vectors(pretrained, finetuned, key).reshape(n_models, -1)
        flat = vectors.double()
        gram += flat @ flat.T
        report.layer_norms[key] = flat.norm(dim=1).tolist()
        clash = int(((vectors > 0).any(dim=0) & (vectors < 0).any(dim=0)).sum())
        report.conflict_rate[key] = clash / max(1, vectors.shape[1])
        conflicts += clash
        entries += vectors.shape[1]
    norms = gram.diagonal().sqrt()
    report.total_norms = norms.tolist()
    denom = torch.outer(norms, norms)
    report.cosine = torch.where(denom > 0, gram / denom.clamp(min=1e-300), torch.zeros_like(gram)).tolist()
    report.overall_conflict_rate = conflicts / max(1, entries)
    return report


def format_report(report: TaskVectorReport, max_layers: int | None = None) -> str:
    """A plain-text table: per-layer norms and conflict rates, then the cosine matrix."""
    width = max([len(n) for n in report.names] + [10])
    key_width = max([len(k) for k in report.layer_norms] + [5])
    lines = [f"{'layer':<{key_width}}  " + "  ".join(f"{n:>{width}}" for n in report.names) + "  conflict"]
    items = list(report.layer_norms.items())
    for key, norms in items if max_layers is None else items[:max_layers]:
        lines.append(f"{key:<{key_width}}  " + "  ".join(f"{v:>{width}.4g}" for v in norms)
                     + f"  {report.conflict_rate[key]:>8.3f}")
    if max_layers is not None and len(items) > max_layers:
        lines.append(f"... {len(items) - max_layers} more layers")
    lines.append(f"{'total ‖τ‖':<{key_width}}  " + "  ".join(f"{v:>{width}.4g}" for v in report.total_norms)
                 + f"  {report.overall_conflict_rate:>8.3f}")
    lines.append("")
    lines.append("pairwise cosine similarity of task vectors")
    lines.append(" " * width + "  " + "  ".join(f"{n:>{width}}" for n in report.names))
    for name, row in zip(report.names, report.cosine):
        lines.append(f"{name:>{width}}  " + "  ".join(f"{v:>{width}.3f}" for v in row))
    lines.append(f"sign-conflict rate (entries with opposing update signs): {report.overall_conflict_rate:.4f}")
    return "\n".join(lines)


def save_heatmap(report: TaskVectorReport, path: str | os.PathLike) -> None:
    """PNG with the pairwise cosine matrix and the per-layer norm matrix (matplotlib, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # Plain lists from the report, plotted from the CPU.
    norms = (torch.tensor(list(report.layer_norms.values()), device="cpu") if report.layer_norms
             else torch.zeros(0, 0, device="cpu"))
    fig, axes = plt.subplots(1, 2, figsize=(12, max(4, 0.12 * len(report.layer_norms) + 2)),
                             gridspec_kw={"width_ratios": [1, 1]})
    ax = axes[0]
    im = ax.imshow(torch.tensor(report.cosine, device="cpu").numpy(), vmin=-1, vmax=1, cmap="coolwarm")
    ax.set_xticks(range(len(report.names)), report.names, rotation=45, ha="right")
    ax.set_yticks(range(len(report.names)), report.names)
    for i, row in enumerate(report.cosine):
        for j, v in enumerate(row):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=8)
    ax.set_title("cosine(τ_i, τ_j)")
    fig.colorbar(im, ax=ax, fraction=0.046)
    ax = axes[1]
    im = ax.imshow(norms.numpy(), aspect="auto", cmap="viridis")
    ax.set_xticks(range(len(report.names)), report.names, rotation=45, ha="right")
    ax.set_ylabel("layer (state-dict order)")
    ax.set_title("‖τ_i‖ per layer")
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(os.fspath(path), dpi=100)
    plt.close(fig)
