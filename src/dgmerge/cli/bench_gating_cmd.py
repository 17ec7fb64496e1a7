"""`dgmerge bench gating-dg` and `dgmerge bench multitask`: the gating merge of Ye et al. on PACS and digits."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Annotated

import typer

from dgmerge.cli.common import fail
from dgmerge.models.entries import SHARED_MOBILENETV2

_DATA = Path("../shared/data/PACS")
_WEIGHTS = Path("../shared") / SHARED_MOBILENETV2
_CACHE = Path("runs/feature_cache")

Config = Annotated[Path | None, typer.Option(help="Config file (default: the shipped config of this benchmark).")]
Data = Annotated[Path, typer.Option(help="PACS in DomainBed layout (its domains are the DG domains / 7-way tasks).")]
Weights = Annotated[Path, typer.Option(help="MobileNetV2 ImageNet weights (safetensors).")]
CacheDir = Annotated[Path, typer.Option(help="Feature cache folder (shared with dgmerge run).")]
Steps = Annotated[int | None, typer.Option(help="Override the expert training steps.")]
Force = Annotated[bool, typer.Option("--force", help="Start afresh (clears this benchmark's outputs) instead of resuming.")]
Device = Annotated[str | None, typer.Option("--device", help="Where to train and evaluate: auto (the first GPU if any) | cpu | cuda | cuda:N (default: the config's train.device).")]


def _device(device: str | None) -> dict[str, str]:
    return {"train.device": device} if device else {}


def _prepare(out: Path, force: bool) -> None:
    # Rerunning resumes (finished cells are skipped); --force clears only what these benchmarks write.
    if force:
        (out / "results.jsonl").unlink(missing_ok=True)
        (out / "table.md").unlink(missing_ok=True)
        shutil.rmtree(out / "models", ignore_errors=True)


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
        device: Device = None,
    ) -> None:
        """PACS leave-one-domain-out: AvgMean, RegMean, Task Arithmetic and gating + AvgMean/RegMean for each m."""
        from dgmerge.pipeline.bench_gating import DG_CONFIG, GatingBenchOptions, run_gating_bench

        _prepare(out, force)
        try:
            run_gating_bench(GatingBenchOptions(data=data, weights=weights, out=out, cache_dir=cache_dir, config=config,
                                                seeds=seeds, test_domains=test_domains, steps=steps,
                                                overrides=_device(device)), DG_CONFIG)
        except (FileNotFoundError, ValueError) as exc:
            fail(str(exc))

    @bench_app.command("multitask")
    def multitask(
        config: Config = None,
        out: Annotated[Path, typer.Option(help="Output folder (results.jsonl, table.md, models).")] = Path("runs/gating-multitask"),
        data: Data = _DATA,
        weights: Weights = _WEIGHTS,
        cache_dir: CacheDir = _CACHE,
        steps: Steps = None,
        force: Force = False,
        device: Device = None,
    ) -> None:
        """Multi-task merging across label spaces: PACS domains as 7-way tasks + scikit-learn digits, 2–4 at a time."""
        from dgmerge.pipeline.bench_gating import MULTITASK_CONFIG, GatingBenchOptions, run_gating_bench

        _prepare(out, force)
        try:
            run_gating_bench(GatingBenchOptions(data=data, weights=weights, out=out, cache_dir=cache_dir, config=config,
                                                steps=steps, overrides=_device(device)), MULTITASK_CONFIG)
        except (FileNotFoundError, ValueError) as exc:
            fail(str(exc))
