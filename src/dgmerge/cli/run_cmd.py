"""`dgmerge demo`, `train`, `evaluate` and `report`: running experiments and reading results."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Optional

import typer

from dgmerge.config import ConfigError, load_config, parse_overrides


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2)


def _clear_outputs(out_dir: Path) -> None:
    # Only what dgmerge itself writes, so --force never deletes a user's other files.
    for name in ("results.jsonl", "report.md", "report.csv"):
        (out_dir / name).unlink(missing_ok=True)
    for name in ("models", "logs"):
        shutil.rmtree(out_dir / name, ignore_errors=True)


def demo(
    out: Path = typer.Option(Path("dgmerge-demo"), "--out", help="Run directory (results, models, logs)."),
    steps: int = typer.Option(0, help="Fine-tuning steps per model (0 = the default of the chosen data)."),
    seeds: list[int] = typer.Option([0], "--seed", help="Trial seed; repeat for several."),
    data: Optional[Path] = typer.Option(None, help="Real DomainBed dataset dir, e.g. ../shared/data/PACS."),
    weights: Optional[Path] = typer.Option(None, help="ImageNet MobileNetV2 safetensors for --data."),
    test_domains: Optional[list[str]] = typer.Option(None, "--test-domain", help="Held-out domain; repeat. "
                                                     "Default: every domain in turn."),
    max_images: Optional[int] = typer.Option(None, help="Subsample each domain (real data) for a quick run."),
    trainable: str = typer.Option("last:2", help="Trainable part on real data: all | last:N | norms_biases."),
    force: bool = typer.Option(False, "--force", help="Discard earlier results in --out instead of resuming."),
) -> None:
    """Run the whole pipeline end to end and print the results table.

    Without --data: a generated shapes dataset and a tiny CNN pretrained on a separate
    generated domain, a few minutes on a CPU. With --data and --weights: the same pipeline
    on a real dataset, e.g. PACS with ../shared's MobileNetV2.
    """
    from dgmerge.pipeline import demo as demo_lib

    if (out / "results.jsonl").exists():
        if force:
            _clear_outputs(out)
        else:
            typer.echo(f"{out}/results.jsonl exists: finished runs are reused (--force starts afresh).")
    try:
        if data is None:
            cfg = demo_lib.synthetic_config(out, steps=steps or demo_lib.SYNTHETIC_STEPS, seeds=seeds)
            if test_domains:
                cfg.data.test_domains = test_domains
            demo_lib.prepare_synthetic(cfg, log=typer.echo)
        else:
            if weights is None:
                _fail("--data needs --weights (e.g. ../shared/weights/mobilenetv2_100_imagenet_tflite.safetensors)")
            cfg = demo_lib.real_config(data, weights, out, steps or demo_lib.REAL_STEPS, seeds, test_domains, max_images, trainable)
        table = demo_lib.run_demo(cfg, log=typer.echo)
    except (ConfigError, FileNotFoundError, ValueError) as exc:
        _fail(str(exc))
    typer.echo("")
    typer.echo(table)
    typer.echo(f"results: {out / 'results.jsonl'} · table: {out / 'report.md'}")


def train(
    config: Path = typer.Argument(..., help="YAML experiment config, or a shipped one by name: "
                                  "pacs_mobilenetv2, clip_vitb16_openclip."),
    overrides: list[str] = typer.Option([], "--set", help="Override a field: --set train.lr=1e-4 (repeatable)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Run directory (overrides output_dir)."),
) -> None:
    """Run a leave-one-domain-out experiment from a config: probe/zero-shot, ERM, per-source models, merge."""
    from dgmerge.pipeline.experiment import run_experiment
    from dgmerge.reports.table import build_tables, to_markdown

    try:
        extra = parse_overrides(overrides)
        if out is not None:
            extra["output_dir"] = str(out)
        cfg = load_config(config, extra)
        rows = run_experiment(cfg, log=typer.echo)
    except (ConfigError, FileNotFoundError, ValueError) as exc:
        _fail(str(exc))
    if rows:
        typer.echo("\n".join(to_markdown(t) for t in build_tables(rows)))
    typer.echo(f"results appended to {cfg.output_dir / 'results.jsonl'}")


def evaluate(
    model: Path = typer.Argument(..., help="A model written by dgmerge (safetensors with metadata)."),
    data: Path = typer.Option(..., help="DomainBed dataset dir to score, e.g. ../shared/data/PACS."),
    domains: Optional[list[str]] = typer.Option(None, "--domain", help="Domain to score; repeat (default all)."),
    like: Optional[Path] = typer.Option(None, help="Borrow architecture metadata from this model "
                                        "(for merged state dicts written by `dgmerge merge`)."),
    batch_size: int = typer.Option(64, help="Evaluation batch size."),
    max_images: Optional[int] = typer.Option(None, help="Score only the first N images of each domain."),
) -> None:
    """Accuracy of a saved model on every image of each domain of a dataset."""
    from dgmerge.pipeline.scoring import score_model

    try:
        scores = score_model(model, data, domains, like=like, batch_size=batch_size, max_images=max_images)
    except (FileNotFoundError, ValueError) as exc:
        _fail(str(exc))
    typer.echo("| domain | images | accuracy |\n|---|---:|---:|")
    for domain, (count, acc) in scores.items():
        typer.echo(f"| {domain} | {count} | {100 * acc:.1f} |")


def sweep(
    config: Path = typer.Argument(..., help="Experiment YAML with a `sweep:` section (grid and/or trials+space)."),
) -> None:
    """Run every hyperparameter variant × seed × test domain; finished jobs are skipped on rerun."""
    from dgmerge.pipeline.sweep import run_sweep, select_by_validation, sweep_results
    from dgmerge.reports.table import build_tables, to_markdown

    try:
        root = run_sweep(config, log=typer.echo)
    except (ConfigError, FileNotFoundError, ValueError) as exc:
        _fail(str(exc))
    rows = select_by_validation(sweep_results(root))
    if rows:
        typer.echo("\n".join(to_markdown(t) for t in build_tables(rows)))
    typer.echo(f"per-job results under {root / 'jobs'}; `dgmerge report {root}` selects by source validation")


def report(
    results: Path = typer.Argument(..., help="A results.jsonl file, a run directory, or a sweep directory."),
    csv_path: Optional[Path] = typer.Option(None, "--csv", help="Also write the table as CSV here."),
    metric: str = typer.Option("test_acc", help="Row field to tabulate (test_acc or val_acc)."),
    select: str = typer.Option("val", help="Sweeps: 'val' keeps, per test domain, seed and method, the "
                               "hyperparameters with the best source-validation accuracy; 'none' keeps all."),
    figures: bool = typer.Option(False, "--figures", help="Also write the figures of the run directory "
                                 "(of every job, for a sweep) into its figures/ folder, as `dgmerge figures`."),
) -> None:
    """Print a markdown table: rows = methods, columns = test domains + Avg, mean ± std over seeds."""
    from dgmerge.evaluation.results import read_results
    from dgmerge.pipeline.artifacts import write_text_atomic
    from dgmerge.pipeline.sweep import select_by_validation, sweep_results
    from dgmerge.reports.table import build_tables, to_csv, to_markdown

    if select not in ("val", "none"):
        _fail(f"--select must be 'val' or 'none', got {select!r}")
    is_sweep = results.is_dir() and (results / "jobs").is_dir()
    if results.is_dir() and not is_sweep:
        results = results / "results.jsonl"
    try:
        rows = sweep_results(results) if is_sweep else read_results(results)
        if is_sweep and select == "val":
            rows = select_by_validation(rows)
        tables = build_tables(rows, metric=metric)
    except (FileNotFoundError, ValueError) as exc:
        _fail(str(exc))
    except KeyError as exc:
        _fail(f"{results}: rows have no field {exc}")
    if not tables:
        _fail(f"{results} holds no result rows")
    typer.echo("\n".join(to_markdown(t) for t in tables))
    if csv_path is not None:
        write_text_atomic(csv_path, to_csv(tables))
        typer.echo(f"CSV written to {csv_path}")
    if figures:
        from dgmerge.reports.run_figures import write_run_figures

        run_dirs = sorted(p.parent for p in results.glob("jobs/*/results.jsonl")) if is_sweep else [results.parent]
        for run_dir in run_dirs:
            made = write_run_figures(run_dir, data_dir=_dataset_dir(run_dir), log=typer.echo)
            for note in made.notes:
                typer.echo(f"  note: {note}")
            typer.echo(f"{len(made.written)} figure file(s) in {run_dir / 'figures'}")


def _dataset_dir(run_dir: Path) -> Optional[Path]:
    """The dataset a sweep job ran on (from its config.json), for figures that need images."""
    import json

    try:
        data = json.loads((run_dir / "config.json").read_text())["config"]["data"]
    except (OSError, KeyError, ValueError):
        return None
    return Path(data["root"]) / data["dataset"]


def register(app: typer.Typer) -> None:
    """Add the run commands to the root app."""
    app.command()(demo)
    app.command()(train)
    app.command()(evaluate)
    app.command()(sweep)
    app.command()(report)
