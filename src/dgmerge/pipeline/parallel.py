"""Run one experiment's (seed, test domain) cells in several worker processes on one machine.

On a few CPU cores, N single-threaded processes each training their own small models use the
cores better than one process whose tiny convolutions cannot keep N threads busy. Workers
append to the same results.jsonl (one write per row) and share the on-disk feature cache,
which the parent builds first so no two workers compute it at once.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Hashable, Sequence

from dgmerge.config import ExperimentConfig
from dgmerge.data.imagefolder import scan_domains
from dgmerge.methods import build_cell
from dgmerge.pipeline.experiment import experiment_key, planned_cells

Cell = tuple[int, str]
Log = Callable[[str], None]


def plan_workers(cells: Sequence[Cell], cost: Callable[[Cell], float], jobs: int,
                 together: Callable[[Cell], Hashable] | None = None) -> list[list[Cell]]:
    """Split cells into `jobs` groups of similar total cost (longest first, to the lightest group).

    Cells with the same `together(cell)` go to one group (a held-out domain's seeds, when the
    later seeds need the earlier ones' rows). Empty groups are dropped, so fewer cells than
    jobs gives one group per cell.
    """
    if jobs < 1:
        raise ValueError(f"jobs must be at least 1, got {jobs}")
    units: dict[Hashable, list[Cell]] = {}
    for cell in cells:
        units.setdefault(together(cell) if together else cell, []).append(cell)
    groups: list[list[Cell]] = [[] for _ in range(jobs)]
    loads = [0.0] * jobs
    costed = [(sum(map(cost, unit)), unit) for unit in units.values()]
    for unit_cost, unit in sorted(costed, key=lambda cu: (-cu[0], sorted(cu[1]))):
        lightest = loads.index(min(loads))
        groups[lightest] += unit
        loads[lightest] += unit_cost
    return [sorted(group) for group in groups if group]


def experiment_cells(cfg: ExperimentConfig) -> tuple[list[Cell], dict[str, int]]:
    """Every (seed, test domain) cell of `cfg`, as the loop runs them, and each domain's image count (its cost proxy)."""
    index = scan_domains(cfg.data.root / cfg.data.dataset)
    sizes = {d: len(index.samples[d]) for d in index.domains}
    return [(seed, name) for seed, name, _ in planned_cells(cfg, index, experiment_key(cfg))], sizes


def warm_feature_cache(cfg: ExperimentConfig, cell: Cell, log: Log) -> None:
    """Build every domain's on-disk activation cache once, before the workers start."""
    if cfg.train.feature_cache != "disk":
        return
    index = scan_domains(cfg.data.root / cfg.data.dataset)
    log("building the feature cache of every domain (once; the workers share it)")
    build_cell(cfg, index, cell[1], cell[0], experiment_key(cfg))


def run_workers(groups: Sequence[Sequence[Cell]], argv: Callable[[Sequence[Cell]], list[str]], log_dir: Path,
                log: Log, threads: int | None = None) -> None:
    """Start one `python -m dgmerge.cli.main <argv(cells)>` per group, wait for all of them.

    Each worker gets OMP/MKL thread counts of cores // workers and its own log file. Raises
    RuntimeError naming the failed workers' logs (the others run to the end: their rows count).
    """
    log_dir.mkdir(parents=True, exist_ok=True)
    threads = threads or max(1, (os.cpu_count() or 1) // max(1, len(groups)))
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    running = []
    for i, cells in enumerate(groups):
        path = log_dir / f"worker{i}.log"
        handle = open(path, "a", encoding="utf-8")
        command = [sys.executable, "-m", "dgmerge.cli.main", *argv(cells)]
        log(f"worker {i}: {format_cells(cells)} ({threads} thread(s)) → {path}")
        running.append((i, path, handle, subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT,
                                                          env=env)))
    failed = []
    start = time.perf_counter()
    for i, path, handle, process in running:
        code = process.wait()
        handle.close()
        log(f"worker {i} finished ({'ok' if code == 0 else f'exit {code}'}) after "
            f"{(time.perf_counter() - start) / 60:.1f} min")
        if code != 0:
            failed.append(str(path))
    if failed:
        raise RuntimeError(f"worker(s) failed; see {', '.join(failed)} (rerun to resume)")


def format_cells(cells: Sequence[Cell]) -> str:
    """"0:photo,1:sketch": the --cells syntax."""
    return ",".join(f"{seed}:{domain}" for seed, domain in cells)


def parse_cells(text: str) -> set[Cell]:
    """Inverse of format_cells; errors name the bad item."""
    cells = set()
    for item in filter(None, (part.strip() for part in text.split(","))):
        seed, sep, domain = item.partition(":")
        if not sep or not seed.strip().lstrip("-").isdigit() or not domain:
            raise ValueError(f"bad cell {item!r} in --cells: use SEED:DOMAIN[,SEED:DOMAIN...]")
        cells.add((int(seed), domain))
    return cells
