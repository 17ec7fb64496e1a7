"""Leave-one-domain-out experiment: one cell per (seed, test domain), each method run on it.

For each seed and test domain the loop builds a cell (splits with the test domain held out
of training, the head and model selection; θ0 with its frozen head; datasets or cached
activations) and calls every requested experiment method on it, in registered order. It
does not know what the methods do: `dgmerge.methods` registers them. Each method appends
its rows to results.jsonl, so a rerun skips what is already there.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterable

from dgmerge.config import DiwaConfig, MAConfig, SwadConfig, ExperimentConfig, load_config
from dgmerge.data.imagefolder import DomainIndex, scan_domains
from dgmerge.evaluation.results import read_results
from dgmerge.hashing import config_hash
from dgmerge.methods import Cell, build_cell, experiment_names, get_experiment, in_run_order
from dgmerge.methods.build_tasks import build_task_cell, check_tasks, combo_name
from dgmerge.pipeline.ham_tuning import skipped_points, tuning_first

Log = Callable[[str], None]


def experiment_key(cfg: ExperimentConfig) -> str:
    """Hash of everything that changes a result, except which seeds/domains/methods run."""
    payload = cfg.model_dump(mode="json", exclude={"seeds", "methods", "output_dir", "name", "save_models"})
    # Settings that change speed, not results, stay out of the key.
    for section, name in (("data", "test_domains"), ("data", "num_workers"), ("data", "cache_images"),
                          ("train", "feature_cache"), ("train", "feature_cache_dir"),
                          ("train", "checkpoint_every"), ("train", "device"), ("train", "history_device"),
                          ("train", "log_every_s")):
        payload[section].pop(name, None)
    # Settings added later leave the key as it was while they keep their defaults, so runs
    # started before them still resume (fp32 is what every older key meant, and so on).
    for section, name, default in (("train", "precision", "fp32"), ("probe", "fit_on", "train"),
                                   ("ham", "steps", None), ("ham", "eval_every", None)):
        if payload[section].get(name) == default:
            payload[section].pop(name)
            if (section, name) == ("probe", "fit_on"):
                payload["probe"].pop("split_fraction", None)
    for name, model in (("ma", MAConfig), ("swad", SwadConfig), ("diwa", DiwaConfig)):
        if payload.get(name) == model().model_dump(mode="json"):
            payload.pop(name)
    # Variants are rows of their own, each recording its full HAM config: adding one must not
    # invalidate the rest of the experiment.
    # Which seeds tune HAM only decides which rows exist, not their values.
    for name in ("ham_variants", "ham_variant_runs", "ham_tuning_seeds"):
        payload.pop(name, None)
    return config_hash(payload)


def load_experiment(path: Path | str, overrides: dict[str, Any] | None = None) -> ExperimentConfig:
    """A config file (or shipped config name) validated, its `methods:` against the experiment registry."""
    return load_config(path, overrides, methods=experiment_names())


def scope_overrides(seeds: list[int] | None = None, test_domains: list[str] | None = None,
                    steps: int | None = None) -> dict[str, Any]:
    """Config overrides for a command's --seed/--test-domain/--steps (only those given).

    --steps is every training's budget, HAM's included (a config's own `ham.steps` and
    `ham.eval_every` are dropped)."""
    out: dict[str, Any] = {}
    if seeds:
        out["seeds"] = list(seeds)
    if test_domains:
        out["data.test_domains"] = list(test_domains)
    if steps:
        out["train.steps"] = steps
        out["ham.steps"] = None
        out["ham.eval_every"] = None
    return out


def check_methods(cfg: ExperimentConfig) -> None:
    """Every name in `methods:` is registered, named once, and can run on this config (ValueError otherwise)."""
    methods = [get_experiment(name) for name in cfg.methods]
    if len({m.name for m in methods}) != len(methods):
        raise ValueError(f"methods {cfg.methods} name one method twice (an alias and its name)")
    for method in methods:
        if method.check is not None:
            method.check(cfg)
    if cfg.tasks is not None:
        shared = [name for name, m in zip(cfg.methods, methods) if not m.any_label_space]
        if shared:
            raise ValueError(f"methods {shared} need one label space shared by every source; the tasks of "
                             "`tasks:` each have their own (run single_source and gating on tasks)")


def run_experiment(cfg: ExperimentConfig, log: Log = print,
                   cells: set[tuple[int, str]] | None = None) -> list[dict[str, Any]]:
    """Run every (seed, test domain) cell of `cfg`, skipping cells already in results.jsonl.

    With `tasks:` the cells are (seed, task combination) instead. `cells` restricts the run to
    those (seed, name) pairs: how parallel workers split one experiment between them (they
    append to the same results.jsonl).
    """
    check_methods(cfg)
    dataset_dir = cfg.data.root / cfg.data.dataset
    index = scan_domains(dataset_dir)
    results_path = cfg.output_dir / "results.jsonl"
    key = experiment_key(cfg)
    done = finished_methods(results_rows(results_path), key)
    rows: list[dict[str, Any]] = []
    for seed, name, build in planned_cells(cfg, index, key):
        if cells is not None and (seed, name) not in cells:
            continue
        finished = done.get((seed, name), set())
        if cfg.ham_tuning_seeds is not None and seed not in cfg.ham_tuning_seeds:
            finished = finished | _not_chosen(cfg, results_path, key, seed, name, log)
        todo = _todo(cfg, seed, finished)
        if not todo:
            log(f"[skip] seed {seed}, {_what(cfg)} {name}: already in {results_path}")
            continue
        log(f"== seed {seed} · {_what(cfg)} {name} · methods {', '.join(todo)}")
        cell = build()
        cell.done, cell.results_path, cell.log = finished, results_path, log
        rows += run_cell(cell, todo)
    return rows


def _todo(cfg: ExperimentConfig, seed: int, finished: set[str]) -> list[str]:
    return [m for m in in_run_order(list(cfg.methods)) if not get_experiment(m).is_done(cfg, seed, finished)]


@dataclass(frozen=True)
class CellStatus:
    """Where one cell of an experiment stands: its rows so far and the methods still to run.
    `waiting`: the HAM training this seed reuses is not chosen yet (its tuning seeds are not done)."""

    seed: int
    name: str
    rows: int
    todo: list[str]
    waiting: bool = False


def experiment_status(cfg: ExperimentConfig) -> list[CellStatus]:
    """Every cell in run order, with what `run_experiment` would still run there; reads only
    results.jsonl, so it is safe beside a running experiment."""
    results_path = cfg.output_dir / "results.jsonl"
    key = experiment_key(cfg)
    rows = results_rows(results_path)
    done = finished_methods(rows, key)
    counts = Counter((r["seed"], r["test_domain"]) for r in rows if r.get("experiment_key") == key)
    out = []
    for seed, name, _ in planned_cells(cfg, scan_domains(cfg.data.root / cfg.data.dataset), key):
        finished, waiting = done.get((seed, name), set()), False
        if cfg.ham_tuning_seeds is not None and seed not in cfg.ham_tuning_seeds:
            try:
                finished = finished | skipped_points(cfg, rows, key, seed, name, results_path)[1]
            except ValueError:  # the tuning seeds' points are not all in yet
                waiting = True
        out.append(CellStatus(seed, name, counts[(seed, name)], _todo(cfg, seed, finished), waiting))
    return out


def planned_cells(cfg: ExperimentConfig, index: DomainIndex,
                  key: str) -> list[tuple[int, str, Callable[[], Cell]]]:
    """(seed, cell name, builder) of every cell: each held-out domain, or each task combination."""
    dataset_dir = cfg.data.root / cfg.data.dataset
    if cfg.tasks is not None:
        check_tasks(cfg, index)
        return [(seed, combo_name(combo), partial(build_task_cell, cfg, index, combo, seed, key))
                for seed in cfg.seeds for combo in cfg.tasks.combos]
    test_domains = cfg.data.test_domains or list(index.domains)
    unknown = [d for d in test_domains if d not in index.domains]
    if unknown:
        raise ValueError(f"test domains {unknown} are not in {dataset_dir} (domains: {', '.join(index.domains)})")
    if len(index.domains) < 2:
        raise ValueError(f"{dataset_dir} has {len(index.domains)} domain(s); leave-one-out needs at least 2")
    return [(seed, domain, partial(build_cell, cfg, index, domain, seed, key))
            for seed in tuning_first(cfg, cfg.seeds) for domain in test_domains]


def _not_chosen(cfg: ExperimentConfig, results_path: Path, key: str, seed: int, domain: str, log: Log) -> set[str]:
    # Read afresh: the tuning seeds' rows may have been written earlier in this same run.
    rows = results_rows(results_path)
    winner, skipped = skipped_points(cfg, rows, key, seed, domain, results_path)
    if skipped:
        log(f"   HAM's training chosen on seeds {cfg.ham_tuning_seeds} for {domain}: {winner}'s "
            f"(skipping {', '.join(sorted(skipped))})")
    return skipped


def _what(cfg: ExperimentConfig) -> str:
    return "tasks" if cfg.tasks is not None else "test domain"


def run_cell(cell: Cell, methods: list[str]) -> list[dict[str, Any]]:
    """Run each of `methods` on `cell` (in registered order) and return their rows."""
    rows: list[dict[str, Any]] = []
    for name in in_run_order(methods):
        rows += get_experiment(name).run(cell)
    cell.release()
    return rows


def results_rows(results_path: Path) -> list[dict[str, Any]]:
    """Every row of results.jsonl; none when the file does not exist yet."""
    return read_results(results_path) if results_path.exists() else []


def experiment_rows(cfg: ExperimentConfig) -> list[dict[str, Any]]:
    """The rows of `cfg`'s own experiment (its key) in its output_dir's results.jsonl."""
    key = experiment_key(cfg)
    return [r for r in results_rows(cfg.output_dir / "results.jsonl") if r.get("experiment_key") == key]


def finished_methods(rows: Iterable[dict[str, Any]], key: str) -> dict[tuple[int, str], set[str]]:
    """(seed, test domain) -> method names and groups of experiment `key` among `rows`."""
    done: dict[tuple[int, str], set[str]] = {}
    for row in rows:
        if row.get("experiment_key") == key:
            finished = done.setdefault((row["seed"], row["test_domain"]), set())
            finished.add(row["method"])
            # Variants are done one by one (a config may add more); other groups as a whole.
            if row.get("method_group") != "ham_variants":
                finished.add(row.get("method_group", row["method"]))
    return done
