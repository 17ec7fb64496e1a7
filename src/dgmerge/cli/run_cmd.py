"""`dgmerge run`: one experiment from a config (leave-one-domain-out, or task combinations)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from dgmerge.cli.common import fail
from dgmerge.config import ConfigError, parse_overrides
from dgmerge.pipeline.run_lock import RunDirectoryBusy, run_lock


def run(
    config: Path = typer.Argument(..., help="YAML experiment config, or a shipped one by name: "
                                  "pacs_mobilenetv2, clip_vitb16_openclip, gating_pacs_dg, ..."),
    overrides: list[str] = typer.Option([], "--set", help="Override a field: --set train.lr=1e-4 (repeatable)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Run directory (overrides output_dir)."),
    device: Optional[str] = typer.Option(None, "--device", help="Where to train and evaluate: auto (the first GPU if any) | cpu | cuda | cuda:N (default: the config's train.device)."),
) -> None:
    """Run an experiment: every method of `methods:` (see `dgmerge methods`) on every cell of the config."""
    from dgmerge.pipeline.experiment import load_experiment, run_experiment
    from dgmerge.reports.table import build_tables, to_markdown

    try:
        extra = parse_overrides(overrides)
        if out is not None:
            extra["output_dir"] = str(out)
        if device is not None:
            extra["train.device"] = device
        cfg = load_experiment(config, extra)
        # Two runs on one directory would train the same cells twice beside each other.
        with run_lock(cfg.output_dir, "dgmerge run"):
            rows = run_experiment(cfg, log=typer.echo)
    except (ConfigError, FileNotFoundError, ValueError, RunDirectoryBusy) as exc:
        fail(str(exc))
    if rows:
        typer.echo("\n".join(to_markdown(t) for t in build_tables(rows)))
    typer.echo(f"results appended to {cfg.output_dir / 'results.jsonl'}")


def register(app: typer.Typer) -> None:
    """Add `dgmerge run` (and `train`, its former name, hidden) to the root app."""
    app.command("run")(run)
    # `train` named this command before `training/` meant the training loops only; old scripts keep working.
    app.command("train", hidden=True, help="Former name of `dgmerge run`.")(run)
