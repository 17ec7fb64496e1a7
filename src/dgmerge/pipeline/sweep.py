"""`dgmerge sweep`: the DomainBed grid of test domains × seeds × hyperparameters.

A sweep config is an experiment config with a `sweep:` section naming the hyperparameters
to vary (dotted paths into the config), as a full grid or as seeded random draws from a
search space. Every variant is one job in `<output_dir>/jobs/<key>/`, keyed by a hash of its
config: a finished job has a `done` marker and is skipped on rerun; an unfinished one
resumes at the first (seed, test domain, method) without a result row.
"""

from __future__ import annotations

import copy
import itertools
import json
import random
from pathlib import Path
from typing import Any, Callable

from dgmerge.atomic import write_text_atomic
from dgmerge.config import SweepSpec, load_sweep, set_dotted, validate_config
from dgmerge.data.splits import seed_hash
from dgmerge.evaluation.results import read_results
from dgmerge.methods import experiment_names
from dgmerge.pipeline.experiment import experiment_key, run_experiment


def variants(spec: SweepSpec) -> list[dict[str, Any]]:
    """The override sets of a sweep: grid combinations, then random draws (no duplicates)."""
    out: list[dict[str, Any]] = []
    if spec.grid:
        keys = list(spec.grid)
        out += [dict(zip(keys, values)) for values in itertools.product(*(spec.grid[k] for k in keys))]
    space = spec.search_space()
    if spec.trials and not space:
        raise ValueError("sweep.trials needs a sweep.space to draw from")
    for trial in range(spec.trials):
        # Each trial's draw depends on (seed, trial) only, as DomainBed's random search does.
        rng = random.Random(seed_hash("sweep", spec.seed, trial))
        draw = {k: rng.choice(v) for k, v in space.items()}
        if draw not in out:
            out.append(draw)
    return out or [{}]


def plan_jobs(base: dict[str, Any], spec: SweepSpec, source: str = "sweep") -> list[tuple[dict[str, Any], Any]]:
    """Validated (overrides, ExperimentConfig) per job, each writing into its own job folder.

    Every variant is validated before any job runs, so a bad value fails the whole sweep at once.
    """
    root = Path(base.get("output_dir", "runs/sweep"))
    jobs = []
    for overrides in variants(spec):
        raw = copy.deepcopy(base)
        for dotted, value in overrides.items():
            set_dotted(raw, dotted, value)
        cfg = validate_config(raw, source=f"{source} (variant {overrides})", methods=experiment_names())
        cfg.output_dir = root / "jobs" / experiment_key(cfg)
        jobs.append((overrides, cfg))
    return jobs


def run_sweep(path: Path, log: Callable[[str], None] = print) -> Path:
    """Run every job of the sweep in `path`; returns the sweep's output directory."""
    base, spec = load_sweep(path)
    jobs = plan_jobs(base, spec, source=str(path))
    root = Path(base.get("output_dir", "runs/sweep"))
    log(f"sweep: {len(jobs)} job(s) in {root / 'jobs'}")
    for number, (overrides, cfg) in enumerate(jobs, start=1):
        done = cfg.output_dir / "done"
        if done.exists():
            log(f"[{number}/{len(jobs)}] done already: {overrides or 'base config'}")
            continue
        log(f"[{number}/{len(jobs)}] {overrides or 'base config'} -> {cfg.output_dir}")
        cfg.output_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(cfg.output_dir / "config.json",
                          json.dumps({"overrides": overrides, "config": cfg.model_dump(mode="json")}, indent=2))
        run_experiment(cfg, log=log)
        write_text_atomic(done, "")
    return root


def sweep_results(root: Path) -> list[dict[str, Any]]:
    """All result rows of a sweep directory (every job's results.jsonl)."""
    rows: list[dict[str, Any]] = []
    for path in sorted(Path(root).glob("jobs/*/results.jsonl")):
        rows += read_results(path)
    return rows


def select_by_validation(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """DomainBed's training-domain validation across hyperparameters.

    For each (dataset, test domain, seed, method) keep the row of the job with the highest
    source-validation accuracy; the test accuracy never takes part in the choice.
    """
    best: dict[tuple, tuple[float, dict[str, Any]]] = {}
    for row in rows:
        key = (row["dataset"], row["test_domain"], row["seed"], row["method"])
        val = row.get("val_acc")
        score = val if isinstance(val, (int, float)) and val == val else float("-inf")
        current = best.get(key)
        if current is None or score > current[0]:
            best[key] = (score, row)
    return [row for _, row in best.values()]
