"""`dgmerge bench gating-dg` and `dgmerge bench multitask`: the gating merge of Ye et al. on PACS and digits."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Annotated

import typer

from dgmerge.models.timm_backbone import SHARED_MOBILENETV2

_DATA = Path("../shared/data/PACS")
_WEIGHTS = Path("../shared") / SHARED_MOBILENETV2
_CACHE = Path("runs/feature_cache")

Config = Annotated[Path | None, typer.Option(help="YAML settings (default: the shipped config of this benchmark).")]
Data = Annotated[Path, typer.Option(help="PACS in DomainBed layout (its domains are the DG domains / 7-way tasks).")]
Weights = Annotated[Path, typer.Option(help="MobileNetV2 ImageNet weights (safetensors).")]
CacheDir = Annotated[Path, typer.Option(help="Feature cache folder (shared with dgmerge train).")]
Steps = Annotated[int | None, typer.Option(help="Override the expert training steps.")]
Force = Annotated[bool, typer.Option("--force", help="Start afresh (clears this benchmark's outputs) instead of resuming.")]


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code=2)


def _prepare(out: Path, force: bool) -> None:
    # Rerunning resumes (finished cells are skipped); --force clears only what these benchmarks write.
    if force:
        (out / "results.jsonl").unlink(missing_ok=True)
        (out / "table.md").unlink(missing_ok=True)
        shutil.rmtree(out / "models", ignore_errors=True)


def _settings(config: Path | None, steps: int | None, default: str):
    from dgmerge.gating.config import load_bench_config

    try:
        return load_bench_config(config, default=default, steps=steps)
    except (FileNotFoundError, ValueError) as exc:
        _fail(str(exc))


def register(bench_app: typer.Typer) -> None:
    """Add the gating benchmarks to `dgmerge bench`."""

    @bench_app.command("gating-dg")
    def gating_dg(
        config: Config = None,
        out: Annotated[Path, typer.Option(help="Output folder (results.jsonl, table.md, models).")] = Path("runs/gating-dg"),
        data: Data = _DATA,
        weights: Weights = _WEIGHTS,
        cache_dir: CacheDir = _CACHE,
        test_domains: Annotated[list[str] | None, typer.Option("--test-domain", help="Repeat; default all.")] = None,
        seeds: Annotated[list[int] | None, typer.Option("--seed", help="Trial seed; repeat (default: the config's).")] = None,
        steps: Steps = None,
        force: Force = False,
    ) -> None:
        """PACS leave-one-domain-out: AvgMean, RegMean, Task Arithmetic and gating + AvgMean/RegMean for each m."""
        from dgmerge.gating.bench_dg import run_dg

        bench = _settings(config, steps, "gating_pacs_dg")
        _prepare(out, force)
        try:
            run_dg(out, data=data, weights=weights, cache_dir=cache_dir, seeds=seeds or bench.seeds, ms=bench.ms,
                   test_domains=test_domains, pool=bench.pool)
        except (FileNotFoundError, ValueError) as exc:
            _fail(str(exc))

    @bench_app.command("multitask")
    def multitask(
        config: Config = None,
        out: Annotated[Path, typer.Option(help="Output folder (results.jsonl, table.md, models).")] = Path("runs/gating-multitask"),
        data: Data = _DATA,
        weights: Weights = _WEIGHTS,
        cache_dir: CacheDir = _CACHE,
        steps: Steps = None,
        force: Force = False,
    ) -> None:
        """Multi-task merging across label spaces: PACS domains as 7-way tasks + scikit-learn digits, 2–4 at a time."""
        from dgmerge.gating.bench_multitask import run_multitask

        bench = _settings(config, steps, "multitask_pacs_digits")
        _prepare(out, force)
        try:
            run_multitask(out, data=data, weights=weights, cache_dir=cache_dir, seed=bench.seeds[0],
                          combos=bench.combos, ms=bench.ms, pool=bench.pool)
        except (FileNotFoundError, ValueError) as exc:
            _fail(str(exc))
