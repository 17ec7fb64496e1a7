"""Report figures from a run directory: ERM loss curves (HAM Fig. 1b), sensitivity (Fig. 3), HAM diagnostics.

Every figure function returns a `Plotted` (the path, the matplotlib Figure and the plotted
numbers), so callers and tests can check what was drawn without parsing the PNG. PNGs are
written atomically and an existing file is only replaced with `force=True`.
"""

from __future__ import annotations

import csv
import fnmatch
import math
import statistics
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dgmerge.atomic import atomic_write

MethodFilter = str | Sequence[str] | Callable[[dict[str, Any]], bool] | None


@dataclass
class Plotted:
    """A written figure: where it went, the (closed) Figure, and the numbers it shows."""

    path: Path
    figure: Any
    data: dict[str, Any] = field(default_factory=dict)


def pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend (no display; safe in threads and CI)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def check_writable(path: Path, force: bool) -> Path:
    """Raise FileExistsError if `path` exists and not `force`; checked before any costly work."""
    path = Path(path)
    if path.exists() and not force:
        raise FileExistsError(f"{path} already exists; pass force=True (--force) to overwrite it")
    return path


def save_figure(figure: Any, path: Path, force: bool = False, dpi: int = 120) -> Path:
    """Write `figure` as PNG via temp file + rename, then close it (its artists stay inspectable)."""
    path = check_writable(path, force)
    try:
        with atomic_write(path) as temp:
            # The temp name ends in .tmp, so the format must be given explicitly.
            figure.savefig(temp, format="png", dpi=dpi, bbox_inches="tight")
    finally:
        pyplot().close(figure)
    return path


def read_history(path: Path) -> dict[str, np.ndarray]:
    """A per-step CSV log as {column: float array}; blank cells (not logged that step) are NaN."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no training log at {path}")
    with open(path, newline="", encoding="utf-8") as handle:
        records = list(csv.DictReader(handle))
    columns = list(records[0]) if records else []

    def number(text: str | None) -> float:
        try:
            return float(text) if text not in (None, "") else math.nan
        except ValueError:
            return math.nan

    return {c: np.array([number(r.get(c)) for r in records], dtype=float) for c in columns}


def running_mean(values: Sequence[float] | np.ndarray, window: int) -> np.ndarray:
    """Trailing running mean over `window` steps (shorter windows at the start; NaNs ignored)."""
    values = np.asarray(values, dtype=float)
    if window <= 1 or len(values) == 0:
        return values.copy()
    valid = ~np.isnan(values)
    sums = np.cumsum(np.where(valid, values, 0.0))
    counts = np.cumsum(valid)
    lagged_sums = np.concatenate([np.zeros(window), sums[:-window]])[: len(values)]
    lagged_counts = np.concatenate([np.zeros(window), counts[:-window]])[: len(values)]
    n = counts - lagged_counts
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, (sums - lagged_sums) / np.maximum(n, 1), np.nan)


def _series(history: dict[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    return {c[len(prefix):]: v for c, v in history.items() if c.startswith(prefix)}


def loss_curves(history_path: Path, out: Path, smooth: int = 1, title: str | None = None,
                force: bool = False) -> Plotted:
    """Per-source-domain ERM training loss over steps (HAM Fig. 1b), from an erm.csv log.

    One line per `loss/<domain>` column, each smoothed by a trailing running mean of `smooth`
    steps. `data["curves"]` maps domain -> (steps, smoothed losses).
    """
    check_writable(out, force)
    history = read_history(history_path)
    losses = _series(history, "loss/")
    if not losses or "step" not in history:
        raise ValueError(f"{history_path} has no step and loss/<domain> columns (is it an ERM log?)")
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    curves = {}
    for domain, values in sorted(losses.items()):
        keep = ~np.isnan(values)
        steps, smoothed = history["step"][keep], running_mean(values[keep], smooth)
        curves[domain] = (steps, smoothed)
        ax.plot(steps, smoothed, label=domain)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss" + (f" (running mean, {smooth} steps)" if smooth > 1 else ""))
    ax.set_title(title or "ERM loss per source domain")
    ax.legend(title="source domain")
    ax.grid(alpha=0.3)
    return Plotted(save_figure(fig, out, force), fig, {"curves": curves})


def ham_diagnostics(history_path: Path, out: Path, smooth: int = 1, title: str | None = None,
                    force: bool = False) -> Plotted:
    """HAM training diagnostics from ham.csv: τ_i per source, borrowed samples per pair, sign conflicts.

    Three panels over steps; the sign-conflict panel shows the mean and, when logged, each
    source's rate (`sign_conflict/<src>`). The borrow counts (`borrow/<i><-<j>`) and the sign-conflict rate
    are smoothed by a running mean of `smooth` steps. `data` holds the plotted series.
    """
    check_writable(out, force)
    history = read_history(history_path)
    if "step" not in history:
        raise ValueError(f"{history_path} has no step column (is it a HAM log?)")
    steps = history["step"]
    panels = {
        "tau": _series(history, "tau/"),
        "borrow": _series(history, "borrow/"),
        # The mean over sources plus each source's own rate against the mean update.
        "sign_conflict": ({"mean": history["sign_conflict"]} if "sign_conflict" in history else {})
        | _series(history, "sign_conflict/"),
    }
    if not any(panels.values()):
        raise ValueError(f"{history_path} has no tau/, borrow/ or sign_conflict columns")
    labels = {"tau": ("τ_i (mean max-softmax of own batch)", 1),
              "borrow": ("borrowed samples per step (i <- j)", smooth),
              "sign_conflict": ("sign-conflict rate vs mean update", smooth)}
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    data: dict[str, Any] = {}
    for ax, (key, series) in zip(axes, panels.items()):
        ylabel, window = labels[key]
        data[key] = {}
        for name, values in sorted(series.items()):
            keep = ~np.isnan(values)
            data[key][name] = (steps[keep], running_mean(values[keep], window))
            ax.plot(*data[key][name], label=name, linewidth=2.5 if name == "mean" else 1.2)
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if series:
            ax.legend(fontsize="small")
        else:
            ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes)
    fig.suptitle(title or "HAM training diagnostics")
    return Plotted(save_figure(fig, out, force), fig, data)


# ---------------------------------------------------------------- sensitivity (HAM Fig. 3)

def lookup(row: dict[str, Any], path: str) -> Any:
    """The value at a dotted path into a result row (e.g. "hparams.ham.opa_weight"); None if absent."""
    value: Any = row
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def _matches(row: dict[str, Any], method_filter: MethodFilter) -> bool:
    if method_filter is None:
        return True
    if callable(method_filter):
        return bool(method_filter(row))
    patterns = [method_filter] if isinstance(method_filter, str) else list(method_filter)
    return any(fnmatch.fnmatchcase(str(row.get("method")), p) for p in patterns)


@dataclass
class SensitivityPoint:
    """One x value: mean ± std over seeds (in %) of the per-seed average over test domains."""

    value: Any
    mean: float
    std: float
    n_seeds: int


def sensitivity(rows: Iterable[dict[str, Any]], param_path: str | Sequence[str],
                method_filter: MethodFilter = None,
                metrics: Sequence[str] = ("test_acc", "val_acc")) -> dict[str, list[SensitivityPoint]]:
    """Accuracy vs a hyperparameter read from each row, as in HAM Fig. 3.

    `param_path` is a dotted path into the row (or several, the first that resolves wins, e.g.
    ("merge_hparams.trim", "hparams.ham.merge_hparams.trim")); rows without it are skipped.
    `method_filter` keeps rows by method: a glob ("merge:rhm*"), a list of globs, or a predicate.
    For every parameter value, a repeated (test domain, seed) keeps its latest row; each seed's
    score is its mean over the value's test domains (only seeds covering all of them count,
    like the Avg column of reports.table); the point is mean ± population std over seeds.
    Returns {metric: points sorted by value}; NaN metrics (e.g. no val_acc) are left out.
    """
    paths = [param_path] if isinstance(param_path, str) else list(param_path)
    result: dict[str, list[SensitivityPoint]] = {}
    selected = [r for r in rows if _matches(r, method_filter)]
    for metric in metrics:
        latest: dict[Any, dict[tuple[str, Any], float]] = {}
        domains: dict[Any, set[str]] = {}
        for row in selected:
            value = next((v for v in (lookup(row, p) for p in paths) if v is not None), None)
            score = row.get(metric)
            if value is None or score is None or not math.isfinite(float(score)):
                continue
            key = _hashable(value)
            latest.setdefault(key, {})[(row["test_domain"], row["seed"])] = 100.0 * float(score)
            domains.setdefault(key, set()).add(row["test_domain"])
        points = []
        for key, cells in latest.items():
            per_seed: dict[Any, list[float]] = {}
            for (_, seed), score in cells.items():
                per_seed.setdefault(seed, []).append(score)
            seed_means = [statistics.fmean(v) for v in per_seed.values() if len(v) == len(domains[key])]
            if seed_means:
                std = statistics.pstdev(seed_means) if len(seed_means) > 1 else 0.0
                points.append(SensitivityPoint(key, statistics.fmean(seed_means), std, len(seed_means)))
        if points:
            result[metric] = sorted(points, key=lambda p: _sort_key(p.value))
    return result


def _hashable(value: Any) -> Any:
    return repr(value) if isinstance(value, (dict, list)) else value


def _sort_key(value: Any) -> tuple[int, Any]:
    # Numbers in numeric order, anything else after them in string order.
    return (0, float(value)) if isinstance(value, (int, float)) and not isinstance(value, bool) else (1, str(value))


METRIC_LABELS = {"test_acc": "test (target) accuracy", "val_acc": "source validation accuracy"}


def plot_sensitivity(points: dict[str, list[SensitivityPoint]], out: Path, xlabel: str,
                     title: str | None = None, force: bool = False) -> Plotted:
    """Error-bar lines (mean ± std over seeds) of `sensitivity()` output, one line per metric."""
    if not points:
        raise ValueError("no sensitivity points to plot (no row has the parameter and the metric)")
    check_writable(out, force)
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 4))
    values = sorted({_hashable(p.value) for series in points.values() for p in series}, key=_sort_key)
    numeric = all(_sort_key(v)[0] == 0 for v in values)
    # Non-numeric values (e.g. "tensor"/"model") get evenly spaced category positions.
    position = {v: (float(v) if numeric else i) for i, v in enumerate(values)}
    for metric, series in points.items():
        ax.errorbar([position[p.value] for p in series], [p.mean for p in series], yerr=[p.std for p in series],
                    marker="o", capsize=3, label=METRIC_LABELS.get(metric, metric))
    if not numeric:
        ax.set_xticks(list(position.values()), [str(v) for v in values])
    ax.set_xlabel(xlabel)
    ax.set_ylabel("accuracy (%), mean ± std over seeds")
    ax.set_title(title or f"sensitivity to {xlabel}")
    ax.legend()
    ax.grid(alpha=0.3)
    return Plotted(save_figure(fig, out, force), fig, {"points": points})


__all__ = ["Plotted", "SensitivityPoint", "check_writable", "ham_diagnostics", "lookup", "loss_curves",
           "plot_sensitivity", "pyplot", "read_history", "running_mean", "save_figure", "sensitivity"]
