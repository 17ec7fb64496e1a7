"""`dgmerge sweep`: the DomainBed grid of test domains × seeds × hyperparameters.

A sweep config is an experiment config with a `sweep:` section naming the hyperparameters
to vary (dotted paths into the config), as a full grid or as seeded random draws from a
search space. Every variant is one job in `<output_dir>/jobs/<key>/`, keyed by a hash of its
config: a finished job has a `done` marker and is skipped on rerun; an unfinished one
resumes at the first (seed, test domain, method) without a result row.

The jobs run one after the other in this process (`launcher: local`) or as one SLURM job array
through submitit (`launcher: slurm`); both run `run_job`, so a job's folder looks the same
whichever ran it, and either launcher resumes what the other left unfinished.
"""

from __future__ import annotations

import copy
import itertools
import json
import random
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Literal

from dgmerge.atomic import write_text_atomic
from dgmerge.config import ExperimentConfig, SweepSpec, load_sweep, set_dotted, validate_config
from dgmerge.config.sweep import SlurmSpec
from dgmerge.data.splits import seed_hash
from dgmerge.evaluation.results import read_results
from dgmerge.methods import experiment_names
from dgmerge.pipeline.experiment import experiment_key, run_experiment

if TYPE_CHECKING:  # submitit is an optional extra, imported only when SLURM is asked for
    import submitit

Log = Callable[[str], None]
PlannedJob = tuple[dict[str, Any], ExperimentConfig]
# How often (seconds) the SLURM launcher looks for finished jobs; each look is a file check,
# submitit asks sacct at most once a minute.
POLL_S = 1.0


class SweepError(RuntimeError):
    """A sweep whose jobs could not be launched, or some of whose jobs failed."""


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


def plan_jobs(base: dict[str, Any], spec: SweepSpec, source: str = "sweep",
              settings: dict[str, Any] | None = None) -> list[PlannedJob]:
    """Validated (overrides, ExperimentConfig) per job, each writing into its own job folder.

    settings: dotted overrides applied to every job after its variant's (e.g. train.device from
    the command line); they are not part of the variant, so they stay out of `overrides`.
    Every variant is validated before any job runs, so a bad value fails the whole sweep at once.
    """
    root = Path(base.get("output_dir", "runs/sweep"))
    jobs = []
    for overrides in variants(spec):
        raw = copy.deepcopy(base)
        for dotted, value in {**overrides, **(settings or {})}.items():
            set_dotted(raw, dotted, value)
        cfg = validate_config(raw, source=f"{source} (variant {overrides})", methods=experiment_names())
        cfg.output_dir = root / "jobs" / experiment_key(cfg)
        jobs.append((overrides, cfg))
    return jobs


def run_job(cfg: ExperimentConfig, overrides: dict[str, Any], log: Log = print) -> Path:
    """Run one sweep job in `cfg.output_dir`: its config.json, the experiment, then the `done` marker.

    Module-level and picklable: the local loop calls it and submitit ships it to SLURM jobs.
    """
    cfg.output_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(cfg.output_dir / "config.json",
                      json.dumps({"overrides": overrides, "config": cfg.model_dump(mode="json")}, indent=2))
    run_experiment(cfg, log=log)
    # Written last and atomically: a job killed before this point resumes on the next run.
    write_text_atomic(cfg.output_dir / "done", "")
    return cfg.output_dir


def unfinished(jobs: list[PlannedJob], log: Log) -> list[tuple[int, PlannedJob]]:
    """The (number, job) pairs without a `done` marker; finished ones are logged and left out."""
    todo = []
    for number, (overrides, cfg) in enumerate(jobs, start=1):
        if (cfg.output_dir / "done").exists():
            log(f"[{number}/{len(jobs)}] done already: {overrides or 'base config'}")
        else:
            todo.append((number, (overrides, cfg)))
    return todo


def run_sweep(path: Path, log: Log = print, launcher: Literal["local", "slurm"] | None = None,
              executor: submitit.Executor | None = None, settings: dict[str, Any] | None = None) -> Path:
    """Run every unfinished job of the sweep in `path`; returns the sweep's output directory.

    launcher: "local" or "slurm" (None: the config's `sweep.launcher`). executor: a submitit
    Executor for the SLURM path instead of the one built from `sweep.slurm` (tests pass a
    LocalExecutor). settings: dotted overrides for every job (see plan_jobs). Raises SweepError
    when SLURM jobs fail, naming each one's job id and stderr log.
    """
    base, spec = load_sweep(path)
    jobs = plan_jobs(base, spec, source=str(path), settings=settings)
    root = Path(base.get("output_dir", "runs/sweep"))
    launcher = launcher or spec.launcher
    log(f"sweep: {len(jobs)} job(s) in {root / 'jobs'} ({launcher})")
    todo = unfinished(jobs, log)
    if launcher == "local":
        for number, (overrides, cfg) in todo:
            log(f"[{number}/{len(jobs)}] {overrides or 'base config'} -> {cfg.output_dir}")
            run_job(cfg, overrides, log=log)
    elif todo:
        submit_jobs(todo, len(jobs), executor or slurm_executor(spec.slurm, root), log)
    return root


def slurm_parameters(slurm: SlurmSpec) -> dict[str, Any]:
    """submitit AutoExecutor parameters for `slurm` (only the options that are set)."""
    params: dict[str, Any] = {
        "name": "dgmerge-sweep", "timeout_min": slurm.timeout_min, "gpus_per_node": slurm.gpus_per_node,
        "cpus_per_task": slurm.cpus_per_task, "mem_gb": slurm.mem_gb,
        "slurm_partition": slurm.partition, "slurm_account": slurm.account, "slurm_qos": slurm.qos,
        "slurm_constraint": slurm.constraint, "slurm_array_parallelism": slurm.array_parallelism,
        "slurm_additional_parameters": dict(slurm.additional_parameters) or None,
    }
    return {key: value for key, value in params.items() if value is not None}


def slurm_executor(slurm: SlurmSpec, root: Path) -> submitit.Executor:
    """A submitit executor for SLURM with the resources of `slurm`, logging under its folder."""
    try:
        import submitit
    except ImportError as exc:
        raise SweepError('launcher "slurm" needs submitit: pip install "dgmerge[slurm]"') from exc
    folder = slurm.folder or root / "slurm"
    try:
        executor = submitit.AutoExecutor(folder=folder, cluster="slurm")
    except RuntimeError as exc:  # no srun/sbatch on this machine
        raise SweepError(f"cannot submit to SLURM from here: {exc}") from exc
    executor.update_parameters(**slurm_parameters(slurm))
    return executor


def submit_jobs(todo: list[tuple[int, PlannedJob]], total: int, executor: submitit.Executor, log: Log) -> None:
    """Submit `todo` as one job array through `executor`, wait for every job, raise SweepError on failures."""
    from submitit.helpers import as_completed  # present whenever an executor is

    with executor.batch():  # one array: the scheduler sees one submission, throttled by array_parallelism
        submitted = [executor.submit(run_job, cfg, overrides) for _, (overrides, cfg) in todo]
    labels = {}
    for (number, (overrides, cfg)), job in zip(todo, submitted):
        labels[job.job_id] = f"[{number}/{total}]"
        log(f"[{number}/{total}] {overrides or 'base config'} -> {cfg.output_dir} (job {job.job_id})")
    failures = []
    try:
        for job in as_completed(submitted, poll_frequency=POLL_S):
            error = job.exception()
            status = "failed" if error is not None else "done"
            log(f"{labels[job.job_id]} job {job.job_id} {status}")
            if error is not None:
                failures.append(f"{labels[job.job_id]} job {job.job_id} failed "
                                f"({_summary(error)}); log: {job.paths.stderr}")
    except KeyboardInterrupt:
        # The jobs belong to the scheduler, not to this process: say how to find them again.
        log(f"stopped waiting; submitted jobs keep running (ids: {', '.join(labels)}): "
            "rerun the sweep once they end to collect them, or scancel them")
        raise
    if failures:
        raise SweepError(f"{len(failures)} of {len(submitted)} job(s) failed:\n" + "\n".join(failures))


def _summary(error: BaseException) -> str:
    """One line of a job's error: the exception line of its traceback, or the scheduler's verdict."""
    text = str(error)
    if "with trace:" in text:  # FailedJobError: the traceback sits between two lines of dashes
        trace = re.split(r"\n-{10,}\n", text)[1:2] or [text]
        lines = [line.strip() for line in trace[0].splitlines() if line.strip()]
    else:  # UncompletedJobError (timeout, out of memory, cancelled): its first two lines say which
        lines = [" ".join(line.strip() for line in text.splitlines()[:2])]
    return (lines[-1] if lines else type(error).__name__)[:300]


def sweep_results(root: Path) -> list[dict[str, Any]]:
    """All result rows of a sweep directory (every job's results.jsonl)."""
    rows: list[dict[str, Any]] = []
    for path in sorted(Path(root).glob("jobs/*/results.jsonl")):
        rows += read_results(path)
    return rows


def select_by_validation(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """DomainBed's training-domain validation across hyperparameters.

    For each (dataset, test domain, seed, method) keep the row of the job with the highest
    source-validation accuracy; the test accuracy never takes part in the choice. A tuning
    point of a method (a row with `tuning_of`, e.g. HAM's λ and r as `ham_variants` with
    tuning: true) competes with that method's own rows, and a winning one is reported under
    the method's name with `selected_variant` saying which point won.
    """
    best: dict[tuple, tuple[float, dict[str, Any]]] = {}
    for row in rows:
        if row.get("tuning_of"):
            row = {**row, "method": row["tuning_of"], "selected_variant": row["method"]}
        key = (row["dataset"], row["test_domain"], row["seed"], row["method"])
        val = row.get("val_acc")
        score = val if isinstance(val, (int, float)) and val == val else float("-inf")
        current = best.get(key)
        if current is None or score > current[0]:
            best[key] = (score, row)
    return [row for _, row in best.values()]
