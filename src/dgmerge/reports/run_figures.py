"""Every figure and table a run directory supports, written into one folder (`dgmerge figures`).

Reads what `pipeline.experiment` writes — results.jsonl, logs/seed<S>/<domain>/{erm,ham}.csv,
models/seed<S>/<domain>/*.safetensors — and skips, with a one-line note, whatever is missing,
so a partial or baseline-only run still gets the figures it can have.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dgmerge.atomic import write_text_atomic
from dgmerge.evaluation.results import read_results
from dgmerge.reports.ablations import ablation_tables, variant_label
from dgmerge.reports.figures import (
    check_writable,
    ham_diagnostics,
    loss_curves,
    plot_sensitivity,
    sensitivity,
)
from dgmerge.reports.table import build_tables, to_markdown

Log = Callable[[str], None]

# (file stem, x label, method filter, param paths): HAM Fig. 3 plus r of the plain RHM merge.
SENSITIVITIES: list[tuple[str, str, Any, tuple[str, ...]]] = [
    ("sensitivity_lambda", "λ (OPA weight)", lambda row: _ham_varying(row, {"opa_weight"}),
     ("hparams.ham.opa_weight",)),
    ("sensitivity_r_ham", "r (RHM trim ratio, HAM)", lambda row: _ham_varying(row, {"merge_hparams"}),
     ("hparams.ham.merge_hparams.trim",)),
    ("sensitivity_r_rhm", "r (RHM trim ratio, merge of single-source models)",
     lambda row: row.get("merge_method") == "rhm", ("merge_hparams.trim",)),
]


def _ham_varying(row: dict[str, Any], fields: set[str]) -> bool:
    """HAM's own row, or a ham_variants row that changes only `fields` (a sensitivity point).

    Other variants (e.g. without SAE) share λ and r with HAM and would collide with its points.
    """
    if row.get("method") == "ham":
        return True
    variant = row.get("variant")
    return isinstance(variant, dict) and set(variant.get("set", {})) == fields


@dataclass
class FiguresReport:
    """What `write_run_figures` wrote and what it skipped (one note per skip)."""

    written: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(text)).strip("_") or "x"


def _cells(root: Path) -> list[tuple[str, str, Path]]:
    """(seed, test domain, folder) under root/seed<S>/<domain>, sorted."""
    if not root.is_dir():
        return []
    return [(seed_dir.name.removeprefix("seed"), cell.name, cell)
            for seed_dir in sorted(root.glob("seed*")) if seed_dir.is_dir()
            for cell in sorted(seed_dir.iterdir()) if cell.is_dir()]


def write_run_figures(run_dir: Path, out_dir: Path | None = None, *, tsne: bool = True, max_images: int = 100,
                      tsne_models: Sequence[str] | None = None, data_dir: Path | None = None,
                      smooth: int = 10, force: bool = False, log: Log = print) -> FiguresReport:
    """Write loss curves, HAM diagnostics, sensitivity plots, t-SNE grids and report.md for a run.

    `out_dir` defaults to run_dir/figures. Existing files are kept (noted) unless `force`.
    `data_dir` is the dataset folder for t-SNE images; default run_dir/data/<dataset> (the demo
    layout). `tsne_models` are saved model names to compare; by default θ0 under its frozen head
    (linear_probe, or zero_shot under a CLIP text head) and ham. Returns the files written and
    the notes about what was skipped.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"no run directory at {run_dir}")
    out_dir = Path(out_dir) if out_dir is not None else run_dir / "figures"
    report = FiguresReport()

    def attempt(what: str, make: Callable[[], Any]) -> None:
        try:
            plotted = make()
        except FileExistsError:
            report.notes.append(f"kept existing {what} (use --force to overwrite)")
            return
        except (ValueError, FileNotFoundError, ImportError, KeyError) as exc:
            report.notes.append(f"skipped {what}: {exc}")
            return
        report.written.append(Path(getattr(plotted, "path", plotted)))

    for name, title in (("erm", "ERM loss per source domain"), ("ham", "HAM diagnostics")):
        logs = [(s, d, cell / f"{name}.csv") for s, d, cell in _cells(run_dir / "logs")
                if (cell / f"{name}.csv").is_file()]
        if not logs:
            report.notes.append(f"skipped {'loss curves' if name == 'erm' else 'HAM diagnostics'}: "
                                f"no logs/seed*/*/{name}.csv in {run_dir}")
        for seed, domain, path in logs:
            stem = "loss_curves" if name == "erm" else "ham_diagnostics"
            out = out_dir / f"{stem}_seed{seed}_{_slug(domain)}.png"
            plot = loss_curves if name == "erm" else ham_diagnostics
            attempt(str(out), lambda p=path, o=out, s=seed, d=domain, f=plot, t=title:
                    f(p, o, smooth=smooth, title=f"{t} · seed {s} · test domain {d}", force=force))

    rows = _rows(run_dir, report)
    if rows:
        _sensitivities(rows, out_dir, force, report, attempt)
    if tsne:
        for seed, domain, cell in _cells(run_dir / "models"):
            names = list(tsne_models or [_theta0_name(cell), "ham"])
            paths = [cell / f"{_slug(m)}.safetensors" for m in names]
            missing = [p.name for p in paths if not p.is_file()]
            if missing:
                report.notes.append(f"skipped t-SNE seed {seed} {domain}: no {', '.join(missing)} in {cell}")
                continue
            data = data_dir or _default_data_dir(run_dir, paths[0])
            if data is None:
                report.notes.append(f"skipped t-SNE seed {seed} {domain}: dataset not found under {run_dir / 'data'}; "
                                    "pass --data")
                continue
            out = out_dir / f"tsne_seed{seed}_{_slug(domain)}.png"
            log(f"t-SNE seed {seed} · test domain {domain} ({', '.join(names)})")
            attempt(str(out), lambda p=paths, o=out, d=domain, dd=data, s=seed, n=names: _tsne(p, dd, o, n, d,
                                                                                                max_images, s, force))
        if not _cells(run_dir / "models"):
            report.notes.append(f"skipped t-SNE: no saved models under {run_dir / 'models'}")
    if rows:
        attempt(str(out_dir / "report.md"), lambda: _write_report(rows, out_dir, report.written, force))
    return report


def _theta0_name(cell: Path) -> str:
    """The saved θ0 of a cell: linear_probe (a fitted probe head), else zero_shot (a CLIP text head)."""
    return "zero_shot" if (cell / "zero_shot.safetensors").is_file() else "linear_probe"


def _rows(run_dir: Path, report: FiguresReport) -> list[dict[str, Any]]:
    try:
        rows = read_results(run_dir / "results.jsonl")
    except (FileNotFoundError, ValueError) as exc:
        report.notes.append(f"skipped tables and sensitivity plots: {exc}")
        return []
    if not rows:
        report.notes.append(f"skipped tables and sensitivity plots: {run_dir / 'results.jsonl'} is empty")
    return rows


def _sensitivities(rows: list[dict[str, Any]], out_dir: Path, force: bool, report: FiguresReport,
                   attempt: Callable[[str, Callable[[], Any]], None]) -> None:
    datasets = list(dict.fromkeys(str(r.get("dataset")) for r in rows))
    for stem, xlabel, method_filter, paths in SENSITIVITIES:
        for dataset in datasets:
            subset = [r for r in rows if str(r.get("dataset")) == dataset]
            points = sensitivity(subset, paths, method_filter)
            n_values = len(points.get("test_acc", []))
            if n_values < 2:
                report.notes.append(f"skipped {stem} ({dataset}): {n_values} value(s) of {' or '.join(paths)} "
                                    "in the results; a sweep over it is needed")
                continue
            out = out_dir / f"{stem}_{_slug(dataset)}.png"
            attempt(str(out), lambda pts=points, o=out, x=xlabel, d=dataset: plot_sensitivity(
                pts, o, x, title=f"{d}: sensitivity to {x}", force=force))


def _default_data_dir(run_dir: Path, model_path: Path) -> Path | None:
    from dgmerge.files import read_meta

    try:
        dataset = read_meta(model_path).get("dataset")
    except (FileNotFoundError, ValueError):
        return None
    candidate = run_dir / "data" / str(dataset)
    return candidate if dataset and candidate.is_dir() else None


def _tsne(paths: list[Path], data: Path, out: Path, names: Sequence[str], target: str, max_images: int,
          seed: str, force: bool) -> Any:
    from dgmerge.reports.tsne import tsne_figure

    return tsne_figure(paths, data, out, names=list(names), target_domain=target, max_images=max_images,
                       seed=int(seed) if seed.isdigit() else 0, force=force)


def _write_report(rows: list[dict[str, Any]], out_dir: Path, figures: list[Path], force: bool) -> Path:
    path = check_writable(out_dir / "report.md", force)
    parts = ["# Run report", "", "## Test (target) accuracy, %", ""]
    parts += [to_markdown(t) for t in build_tables(rows)]
    val_rows = [r for r in rows if isinstance(r.get("val_acc"), (int, float)) and r["val_acc"] == r["val_acc"]]
    if val_rows:
        parts += ["## Source validation accuracy, %", ""] + [to_markdown(t) for t in build_tables(val_rows, "val_acc")]
    if len({variant_label(r) for r in rows if r.get("method") == "ham"}) > 1:
        parts += ["## HAM ablations (test accuracy, %)", ""] + [to_markdown(t) for t in ablation_tables(rows)]
    pngs = [p for p in figures if p.suffix == ".png"]
    if pngs:
        parts += ["## Figures", ""] + [f"![{p.stem}]({p.relative_to(out_dir) if p.is_relative_to(out_dir) else p})"
                                       for p in pngs]
    write_text_atomic(path, "\n".join(parts) + "\n")
    return path


__all__ = ["SENSITIVITIES", "FiguresReport", "write_run_figures"]
