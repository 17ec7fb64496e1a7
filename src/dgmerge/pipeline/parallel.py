"""Run one experiment's (seed, test domain) cells in several worker processes on one machine.

On a few CPU cores, N single-threaded processes each training their own small models use the
cores better than one process whose tiny convolutions cannot keep N threads busy. Workers
append to the same results.jsonl (one write per row) and share the on-disk feature cache,
which the parent builds first so no two workers compute it at once.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from dgmerge.config import ExperimentConfig
from dgmerge.data.imagefolder import scan_domains
from dgmerge.methods import build_cell
from dgmerge.pipeline.experiment import experiment_key

Cell = tuple[int, str]
Unit = tuple[str, Cell]  # (the part that runs, e.g. "main" or "ablations"; its cell)
Log = Callable[[str], None]


def warm_feature_cache(cfg: ExperimentConfig, cell: Cell, log: Log) -> None:
    """Build every domain's on-disk activation cache once, before the workers start."""
    if cfg.train.feature_cache != "disk":
        return
    index = scan_domains(cfg.data.root / cfg.data.dataset)
    log("building the feature cache of every domain (once; the workers share it)")
    build_cell(cfg, index, cell[1], cell[0], experiment_key(cfg))


def run_queue(units: Sequence[Unit], needs: Callable[[Unit], Iterable[Unit]],
              command: Callable[[Unit], list[str]], log_dir: Path, jobs: int, log: Log,
              threads: int | None = None, poll_s: float = 2.0) -> None:
    """Run each unit as its own process, at most `jobs` at once, in the order given.

    A unit starts as soon as a worker slot is free and every unit it `needs` that is in `units`
    has finished; a need outside `units` counts as done (it finished in an earlier run). A fixed
    split of the cells between workers leaves a core idle once the lighter share is done, and how
    much work a cell has left depends on what earlier runs finished; a queue needs neither guess.
    There are min(jobs, len(units)) slots; slot i appends to worker{i}.log and gets OMP/MKL
    thread counts of cores // slots. A failed unit does not stop the others, but the units that
    need it do not start; at the end RuntimeError names the failed units' logs.
    """
    if jobs < 1:
        raise ValueError(f"jobs must be at least 1, got {jobs}")
    # Fewer units than jobs: fewer slots, each with more threads (one cell on 2 cores gets both).
    jobs = min(jobs, max(1, len(units)))
    log_dir.mkdir(parents=True, exist_ok=True)
    threads = threads or max(1, (os.cpu_count() or 1) // jobs)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    pending, planned = list(units), set(units)
    done: set[Unit] = set()
    dropped: set[Unit] = set()  # failed, or needing a unit that did not finish
    failed: list[str] = []
    running: dict[int, tuple[Unit, subprocess.Popen, Any, float]] = {}
    # A parent stopped by Ctrl-C, an error or SIGTERM stops its workers: an orphan would go on
    # training a cell that the rerun then starts a second time beside it.
    on_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm) if on_main_thread else None
    try:
        while pending or running:
            for slot, (unit, process, handle, started) in list(running.items()):
                code = process.poll()
                if code is None:
                    continue
                handle.close()
                del running[slot]
                log(f"worker {slot}: {unit_label(unit)} {'finished' if code == 0 else f'failed (exit {code})'} "
                    f"after {(time.perf_counter() - started) / 60:.1f} min")
                if code == 0:
                    done.add(unit)
                else:
                    dropped.add(unit)
                    failed.append(f"{unit_label(unit)} ({log_dir / f'worker{slot}.log'})")
            for unit in [u for u in pending if any(n in dropped for n in needs(u))]:
                pending.remove(unit)
                dropped.add(unit)
                log(f"not starting {unit_label(unit)}: a unit it needs failed")
            for slot in (i for i in range(jobs) if i not in running):
                ready = next((u for u in pending if all(n in done or n not in planned for n in needs(u))), None)
                if ready is None:
                    break
                pending.remove(ready)
                path = log_dir / f"worker{slot}.log"
                handle = open(path, "a", encoding="utf-8")
                log(f"worker {slot}: {unit_label(ready)} ({threads} thread(s)) → {path}")
                try:
                    process = subprocess.Popen(command(ready), stdout=handle, stderr=subprocess.STDOUT, env=env)
                except OSError:
                    handle.close()
                    raise
                running[slot] = (ready, process, handle, time.perf_counter())
            if pending and not running:
                raise RuntimeError(f"units {[unit_label(u) for u in pending]} need units that never run")
            if running:
                time.sleep(poll_s)
    finally:
        for _, process, _, _ in running.values():
            process.terminate()
        for _, process, handle, _ in running.values():
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            handle.close()
        if on_main_thread:
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
    if failed:
        raise RuntimeError(f"worker(s) failed: {'; '.join(failed)} (rerun to resume)")


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def unit_label(unit: Unit) -> str:
    """"main 0:photo": a unit as the logs name it."""
    part, (seed, name) = unit
    return f"{part} {seed}:{name}"


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
