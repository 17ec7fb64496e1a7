"""`dgmerge bench pacs-cpu`: HAM vs ERM vs every merge method on PACS with MobileNetV2."""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path
from typing import Optional

import typer

from dgmerge.config import ConfigError
from dgmerge.pipeline.run_lock import run_lock


def pacs_cpu(
    data_root: Optional[Path] = typer.Option(None, "--data-root", help="Directory containing PACS/ "
                                             "(default ../shared/data)."),
    weights: Optional[Path] = typer.Option(None, help="ImageNet MobileNetV2 safetensors (default "
                                           "../shared/weights/mobilenetv2_100_imagenet_tflite.safetensors)."),
    out: Path = typer.Option(Path("runs/bench-pacs-cpu"), "--out", help="Run directory (results, models, report)."),
    ablations: bool = typer.Option(False, "--ablations", help="Run only the HAM ablations that train their own "
                                   "models (w/o SAE, w/o OPA, λ sensitivity)."),
    main_only: bool = typer.Option(False, "--main-only", help="Run only the main table (baselines, merges, HAM "
                                   "and the ablations that reuse HAM's training), not the ablations after it."),
    seeds: Optional[list[int]] = typer.Option(None, "--seed", help="Trial seed; repeat (default 0 1 2)."),
    test_domains: Optional[list[str]] = typer.Option(None, "--test-domain", help="Held-out domain; repeat "
                                                     "(default: all four)."),
    steps: Optional[int] = typer.Option(None, help="Fine-tuning steps of every method, HAM included "
                                        "(default: the config's budgets)."),
    cache_dir: Optional[Path] = typer.Option(None, "--cache-dir", help="Frozen-prefix activation cache "
                                             "(default <out>/feature_cache)."),
    quick: bool = typer.Option(False, "--quick", help="CI-sized: one seed, photo held out, 60 images per "
                               "domain, 6 steps — checks the pipeline, not the numbers."),
    jobs: int = typer.Option(0, "--jobs", min=0, help="Worker processes, each taking the next (seed, test "
                             "domain) cell from one queue, on cores/jobs threads; 0 = one per CPU core."),
    cells: Optional[str] = typer.Option(None, "--cells", hidden=True, help="SEED:DOMAIN,... (set by --jobs "
                                        "for its workers)."),
    force: bool = typer.Option(False, "--force", help="Discard earlier results in --out instead of resuming."),
    dataset: str = typer.Option("PACS", "--dataset", help="A DomainBed-layout dataset under --data-root "
                                "(domains and classes read from its folders), e.g. VLCS or a folder of your own."),
    device: Optional[str] = typer.Option(None, "--device", help="Where to train and evaluate: auto (the first GPU if any) | cpu | cuda | cuda:N (default: the config's train.device)."),
    overrides: list[str] = typer.Option([], "--set", help="Override a field of the benchmark config: "
                                        "--set train.lr=1e-4 (repeatable)."),
    convergence: bool = typer.Option(False, "--convergence", help="Train ERM, the single-source models and HAM "
                                     "for each of --budgets steps and report source-validation accuracy per budget."),
    budgets: Optional[str] = typer.Option(None, "--budgets", help="Comma-separated step budgets for --convergence "
                                          "(default 100,300,1000,2000,4000)."),
    status: bool = typer.Option(False, "--status", help="Say where the run in --out stands (cells done, methods "
                                "left, which process runs it, each worker's last log line) and exit; safe beside "
                                "a running benchmark."),
) -> None:
    """Reproduce the PACS table (HAM paper layout, mean ± std over 3 seeds) on a CPU.

    One command for everything: the main table (baselines, merges, HAM and the ablations that
    reuse HAM's training) first, then the ablations that train their own models (--main-only or
    --ablations for one of the two). It resumes where it stopped and writes
    <out>/bench-report.md with every table so far.
    """
    from dgmerge.config import parse_overrides
    from dgmerge.pipeline.bench import BenchOptions, bench_status, run_pacs_cpu
    from dgmerge.pipeline.convergence import BUDGETS, run_convergence
    from dgmerge.pipeline.parallel import parse_cells

    if ablations and main_only:
        typer.secho("error: --ablations and --main-only each run one part; pass neither for both", fg=typer.colors.RED,
                    err=True)
        raise typer.Exit(code=2)
    if status and (force or convergence or quick):
        typer.secho("error: --status only reads a run; drop --force, --convergence and --quick", fg=typer.colors.RED,
                    err=True)
        raise typer.Exit(code=2)
    # The top-level run holds --out (its workers, given --cells, run under its lock): a second
    # run there would train the same cells twice, and --force delete a live run's rows.
    lock = contextlib.nullcontext() if status or cells else run_lock(out, "dgmerge bench pacs-cpu")
    try:
        with lock:
            if force and (out / "results.jsonl").exists():
                (out / "results.jsonl").unlink()
                for name in ("models", "logs", "checkpoints"):
                    shutil.rmtree(out / name, ignore_errors=True)
            elif (out / "results.jsonl").exists() and not status:
                typer.echo(f"{out}/results.jsonl exists: finished runs are reused (--force starts afresh).")
            opts = BenchOptions(data_root=data_root, weights=weights, out=out, seeds=seeds or None,
                                test_domains=test_domains or None, steps=steps, quick=quick, cache_dir=cache_dir,
                                part="ablations" if ablations else "main" if main_only else "main+ablations",
                                jobs=jobs,
                                cells=parse_cells(cells) if cells else None,
                                overrides={**parse_overrides(overrides), **({"train.device": device} if device else {})},
                                dataset=dataset)
            if status:
                typer.echo(bench_status(opts))
                return
            if convergence:
                steps_list = [int(b) for b in budgets.split(",")] if budgets else list(BUDGETS)
                report = run_convergence(opts, steps_list, log=typer.echo)
            else:
                report = run_pacs_cpu(opts, log=typer.echo)
    except (FileNotFoundError, ConfigError, ValueError, RuntimeError) as err:
        typer.secho(f"error: {err}", fg=typer.colors.RED, err=True)
        raise typer.Exit(code=2) from None
    typer.echo(report)
    typer.echo(f"report: {out / 'bench-report.md'} · results: {out / 'results.jsonl'}")


def register(bench_app: typer.Typer) -> None:
    """Add the PACS benchmark subcommands."""
    bench_app.command("pacs-cpu")(pacs_cpu)
