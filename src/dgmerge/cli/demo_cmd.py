"""`dgmerge demo`: the whole pipeline end to end on generated or real data."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Optional

import typer

from dgmerge.cli.common import fail
from dgmerge.config import ConfigError


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
    device: Optional[str] = typer.Option(None, "--device", help="Where to train and evaluate: auto (the first GPU if any) | cpu | cuda | cuda:N (default: auto)."),
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
                fail("--data needs --weights (e.g. ../shared/weights/mobilenetv2_100_imagenet_tflite.safetensors)")
            cfg = demo_lib.real_config(data, weights, out, steps or demo_lib.REAL_STEPS, seeds, test_domains, max_images, trainable)
        if device is not None:
            cfg.train.device = device
        table = demo_lib.run_demo(cfg, log=typer.echo)
    except (ConfigError, FileNotFoundError, ValueError) as exc:
        fail(str(exc))
    typer.echo("")
    typer.echo(table)
    typer.echo(f"results: {out / 'results.jsonl'} · table: {out / 'report.md'}")


def register(app: typer.Typer) -> None:
    """Add `dgmerge demo` to the root app."""
    app.command()(demo)
