"""`dgmerge bench pacs-cpu`: the HAM paper's non-CLIP table on PACS, reproducible on 2 CPU cores.

One shipped config (configs/bench_pacs_cpu.yaml) defines the setting; this module fills in
where the data and weights are, which part runs (the main table, or the ablations that need
their own training), and turns results.jsonl into the paper-layout tables with the setting
stated next to them. Everything else is the ordinary experiment harness, so a bench run is
resumable (rerun the command) and every row records its full configuration.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Literal

import torch

from dgmerge.atomic import write_text_atomic
from dgmerge.config import ExperimentConfig, resolve_config_path
from dgmerge.data.errors import DatasetNotFoundError
from dgmerge.data.imagefolder import resolve_dataset_dir, scan_domains
from dgmerge.machine import cpu_model
from dgmerge.models.entries import find_pretrained
from dgmerge.pipeline.experiment import (experiment_rows, experiment_status, load_experiment, run_experiment,
                                         scope_overrides)
from dgmerge.pipeline.sweep import select_by_validation
from dgmerge.pipeline.parallel import Unit, format_cells, run_queue, warm_feature_cache
from dgmerge.pipeline.run_lock import lock_holder
from dgmerge.reports.ablations import paired_markdown
from dgmerge.reports.compute import compute_markdown, machines_markdown
from dgmerge.reports.diagnostics import diagnostics_markdown
from dgmerge.reports.selection import selection_markdown
from dgmerge.reports.selection_figure import selection_figure
from dgmerge.reports.table import build_tables, to_markdown
from dgmerge.version import code_version

Log = Callable[[str], None]
Part = Literal["main", "ablations", "all", "main+ablations"]

CONFIG_NAME = "bench_pacs_cpu"
SHARED_DATA = Path("../shared/data")
SHARED_WEIGHTS = Path("../shared/weights/mobilenetv2_100_imagenet_tflite.safetensors")

# Main table rows, in the HAM paper's order: method in results.jsonl -> row label.
MAIN_ROWS = {
    "linear_probe": "Frozen linear probe",
    "erm": "ERM",
    "erm_ma": "ERM + MA",
    "swad": "SWAD",
    "diwa": "DiWA (uniform)",
    "diwa:greedy": "DiWA (greedy)",
    "single_source_mean": "Single-source models (mean)",
    "merge:average": "Avg",
    "merge:task_arithmetic": "Task Arithmetic",
    "merge:ties": "TIES",
    "merge:dare-ties": "DARE + TIES",
    "merge:score": "SCORE",
    "merge:lwptv-style-ties": "LwPTV-style + TIES",
    "merge:regmean": "RegMean",
    "merge:fisher": "Fisher",
    "merge:greedy_soup": "Greedy soup",
    "merge:rhm": "RHM",
    "ham": "HAM",
}
ABLATION_ROWS = {
    "ham": "HAM (full; λ and r chosen on source validation)",
    "ham:reference": "HAM at the ablations' setting (λ 0.1, r 0.2): the reference of the rows below",
    "ham:no-sae": "w/o SAE",
    "ham:no-opa": "w/o OPA",
    "ham:best-checkpoint": "w/o historical averaging (best checkpoint)",
    "ham:layer-level": "layer-level instead of model-level trimming",
    "ham:ties": "TIES instead of RHM",
    "ham:sae-margin-cap-warmup": "SAE above τ+0.1, cap 8, from step 20 (the 100-step bench's rule)",
    "ham_soup": "HAM soup: every λ point's models merged (ours; tuning seeds only)",
}


@dataclass
class BenchOptions:
    """Where the inputs are and what to run; None means the shipped config's value."""

    data_root: Path | None = None
    weights: Path | None = None
    out: Path = Path("runs/bench-pacs-cpu")
    seeds: list[int] | None = None
    test_domains: list[str] | None = None
    steps: int | None = None
    part: Part = "main"
    quick: bool = False
    cache_dir: Path | None = None
    # Worker processes (each on cores // jobs threads; 0 = one per core); `cells` = this
    # process's share when it is one of the workers.
    jobs: int = 1
    cells: set[tuple[int, str]] | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    # Any DomainBed-layout dataset under the data root: domains and classes come from its folders.
    dataset: str = "PACS"


def default_input(given: Path | None, shared: Path, what: str, flag: str) -> Path:
    """`given`, else ../shared's copy when present; else an error saying which flag to pass."""
    path = given if given is not None else shared
    if not path.exists():
        hint = f"pass {flag} PATH" if given is None else f"check {flag}"
        raise FileNotFoundError(f"{what} not found at {path}: {hint}")
    return path


def pacs_cpu_config(opts: BenchOptions) -> ExperimentConfig:
    """The shipped benchmark config with the options applied (validated like any config).

    part "main": every baseline, HAM and the ablations that reuse HAM's training (merge-time
    variants); "ablations": only the variants that train their own models; "all": both in one
    pass over the cells. ("main+ablations" runs "main", then "ablations": `parts`.)
    quick: the CI variant — one seed, photo held out, 60 images per domain, 6 steps.
    """
    overrides: dict[str, Any] = {
        "data.root": str(default_input(opts.data_root, SHARED_DATA, "data root", "--data-root")),
        "data.dataset": opts.dataset,
        "backbone.checkpoint": str(default_input(opts.weights, SHARED_WEIGHTS, "MobileNetV2 weights", "--weights")),
        "output_dir": str(opts.out),
        "train.feature_cache_dir": str(opts.cache_dir or opts.out / "feature_cache"),
    }
    try:
        dataset_dir = resolve_dataset_dir(Path(overrides["data.root"]) / opts.dataset)
    except DatasetNotFoundError as err:
        raise FileNotFoundError(f"{err} (--data-root DIR is the directory that contains {opts.dataset}/)") from None
    if opts.quick:
        # PACS's photo, as the published quick run; another dataset's first domain.
        domains = scan_domains(dataset_dir).domains
        first = "photo" if "photo" in domains else domains[0]
        overrides.update({"seeds": [0], "data.test_domains": [first], "data.max_images_per_domain": 60,
                          "train.steps": 6, "ham.steps": None, "ham.eval_every": None, "train.eval_every": 3,
                          "train.checkpoint_every": 0, "probe.epochs": 10, "train.feature_cache": "memory",
                          "ma.start_step": 3, "diwa.runs": 2, "ham_tuning_seeds": None})
    overrides.update(scope_overrides(opts.seeds, opts.test_domains, opts.steps))
    part = "all" if opts.quick else opts.part  # the CI variant checks that every row is produced
    main = ["linear_probe", "erm", "erm_ma", "swad", "diwa", "single_source", "merge", "ham", "ham_variants",
            "ham_soup"]
    if part == "main+ablations":
        raise ValueError("part 'main+ablations' is two runs: build each part's config (bench.parts)")
    methods = {"main": main, "ablations": ["ham_variants"], "all": main}[part]
    overrides["methods"] = methods
    overrides["ham_variant_runs"] = {"main": "reuse", "ablations": "train", "all": "all"}[part]
    overrides.update(opts.overrides)
    return load_experiment(resolve_config_path(CONFIG_NAME), overrides)


def parts(opts: BenchOptions) -> list[BenchOptions]:
    """The single-part runs `opts` stands for: "main+ablations" is main, then the ablations (the
    main table is complete first); --quick already runs every row in one pass."""
    if opts.part != "main+ablations":
        return [opts]
    if opts.quick:
        return [dataclasses.replace(opts, part="all")]
    return [dataclasses.replace(opts, part="main"), dataclasses.replace(opts, part="ablations")]


def run_pacs_cpu(opts: BenchOptions, log: Log = print) -> str:
    """Run the benchmark part(s) (resuming finished cells) and return the report markdown.

    The report is also written to <out>/bench-report.md; results stay in <out>/results.jsonl.
    Both parts share one experiment key, so the report covers every row either part wrote.
    """
    start = time.perf_counter()
    jobs = opts.jobs or (os.cpu_count() or 1)
    if jobs > 1 and opts.cells is None:
        # One queue over every (part, cell), main first: the main table is complete first, and a
        # worker that finishes takes the next ready unit, so no core idles behind a fixed split.
        cfg = _prepare(parts(opts)[0], log)
        _run_in_workers(opts, cfg, jobs, log)
    else:
        for one in parts(opts):
            cfg = _prepare(one, log)
            run_experiment(cfg, log=log, cells=one.cells)
    wall = time.perf_counter() - start
    every = experiment_rows(cfg)
    report = bench_report(cfg, opts.part, wall, every)
    write_text_atomic(cfg.output_dir / "bench-report.md", report)
    _selection_figure(cfg, every, log)
    return report


def _selection_figure(cfg: ExperimentConfig, every: list[dict[str, Any]], log: Log) -> None:
    """selection.png beside the report: source-validation Avg against held-out Avg per method.
    Regenerated with the report; a run too partial to plot keeps the report and says why."""
    out = cfg.output_dir / "selection.png"
    try:
        selection_figure(select_by_validation(every), MAIN_ROWS, out, force=True,
                         title=f"{cfg.data.dataset}: source validation chooses, held-out is information only")
    except (ValueError, ImportError) as exc:
        log(f"no {out.name}: {exc}")


def _prepare(one: BenchOptions, log: Log) -> ExperimentConfig:
    """The part's config, announced and written beside the results (`dgmerge report --figures`
    finds the data there)."""
    cfg = pacs_cpu_config(one)
    log(f"bench pacs-cpu ({one.part}{', quick' if one.quick else ''}): {setting_line(cfg)}")
    cfg.output_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(cfg.output_dir / "config.json", json.dumps(
        {"benchmark": "pacs-cpu", "part": one.part, "config": cfg.model_dump(mode="json")}, indent=1))
    return cfg


def bench_status(opts: BenchOptions, now: float | None = None) -> str:
    """Where a run in opts.out stands, without running anything: per cell the rows written and
    the methods still to run, then each worker log's last line and its age. Safe beside the run."""
    lines: list[str] = []
    for one in parts(opts):
        cfg = pacs_cpu_config(one)
        cells = experiment_status(cfg)
        finished = sum(not c.todo for c in cells)
        lines.append(f"{cfg.output_dir} ({one.part}): {finished} of {len(cells)} cells done, "
                     f"{sum(c.rows for c in cells)} rows in results.jsonl")
        for c in cells:
            state = ("done" if not c.todo else "to do: " + ", ".join(c.todo)
                     + (" (HAM's training is chosen once the tuning seeds finish)" if c.waiting else ""))
            lines.append(f"  seed {c.seed} · {c.name}: {c.rows} rows; {state}")
    holder = lock_holder(cfg.output_dir)
    lines.append(f"running: {holder}" if holder else "not running (no process holds the directory)")
    now = time.time() if now is None else now
    for path in sorted((cfg.output_dir / "logs").glob("worker*.log")):
        last = next((line for line in reversed(path.read_text(errors="replace").splitlines()) if line.strip()), "")
        lines.append(f"{path.name} ({(now - path.stat().st_mtime) / 60:.0f} min ago): {last}")
    return "\n".join(lines)


def _run_in_workers(opts: BenchOptions, cfg: ExperimentConfig, jobs: int, log: Log) -> None:
    """Run every unfinished (part, cell) as this command on that one cell, `jobs` at a time, from
    a queue: main cells first, so the main table is complete first, then the ablations."""
    every_part = parts(opts)
    names = [one.part for one in every_part]
    units = [(one.part, (c.seed, c.name)) for one in every_part for c in experiment_status(pacs_cpu_config(one))
             if c.todo]
    if not units:
        log("every cell is already in results.jsonl")
        return
    tuning = cfg.ham_tuning_seeds

    def needs(unit: Unit) -> set[Unit]:
        # A cell's ablations reuse its main part's models; a seed that reuses HAM's tuning needs
        # its held-out domain's tuning seeds through the same part.
        part, (seed, name) = unit
        upto = names[:names.index(part) + 1]
        out = {(p, (seed, name)) for p in upto if p != part}
        if tuning is not None and seed not in tuning:
            out |= {(p, (t, name)) for p in upto for t in tuning}
        return out

    warm_feature_cache(cfg, units[0][1], log)

    def command(unit: Unit) -> list[str]:
        part, cell = unit
        args = [sys.executable, "-m", "dgmerge.cli.main", "bench", "pacs-cpu", "--out", str(cfg.output_dir),
                "--data-root", str(cfg.data.root), "--dataset", cfg.data.dataset,
                "--weights", str(cfg.backbone.checkpoint), "--cache-dir", str(cfg.train.feature_cache_dir),
                "--cells", format_cells([cell])]
        args += ["--steps", str(opts.steps)] if opts.steps else []
        args += ["--device", cfg.train.device]
        # The workers rebuild this config: every override travels with them, as YAML-readable JSON.
        for key, value in opts.overrides.items():
            if key != "train.device":
                args += ["--set", f"{key}={json.dumps(value)}"]
        args += {"ablations": ["--ablations"], "main": ["--main-only"]}.get(part, [])
        return args + (["--quick"] if opts.quick else [])

    run_queue(units, needs, command, cfg.output_dir / "logs", jobs, log)


def setting_line(cfg: ExperimentConfig) -> str:
    """The setting in one line: backbone, trainable part, resolution, steps, batch, lr, seeds."""
    return (f"{cfg.backbone.name} ({cfg.backbone.checkpoint}), trainable {cfg.train.trainable} "
            f"({trainable_part(cfg)}), {input_size(cfg)}, "
            f"{cfg.train.steps} steps{'' if cfg.ham.steps is None else f' (HAM {cfg.ham.steps})'} × batch "
            f"{cfg.train.batch_size} per source, lr {cfg.train.lr:g}, "
            f"frozen linear-probe head, seeds {cfg.seeds}")


def input_size(cfg: ExperimentConfig) -> str:
    """The input resolution: the config's, else its pretrained entry's (tflite_in1k: 224 px)."""
    entry = find_pretrained(cfg.backbone.name, cfg.backbone.pretrained)
    size = cfg.backbone.image_size or (entry and entry.image_size)
    return f"{size}×{size} px" if size else "the model's own resolution"


def trainable_part(cfg: ExperimentConfig) -> str:
    """Which modules `train.trainable` trains, read from the model itself (no weights loaded)."""
    try:
        from dgmerge.models import load_backbone
        from dgmerge.models.classifier import trainable_encoder_names

        backbone = load_backbone(cfg.backbone)
        model = backbone.encoder
        names = trainable_encoder_names(model, backbone, cfg.train.trainable)
    except Exception as exc:  # the description is informative only; never fail a run over it
        return f"modules unknown: {exc}"
    params = dict(model.named_parameters())
    modules = list(dict.fromkeys(n.rsplit(".", 1)[0].split(".0.")[0] for n in names))
    count = sum(params[n].numel() for n in names if n in params)
    return f"{', '.join(modules)}; {count / 1e6:.2f}M parameters"


def bench_report(cfg: ExperimentConfig, part: str, wall_time_s: float,
                 every: list[dict[str, Any]] | None = None) -> str:
    """Markdown: the setting, the main and ablation tables (mean ± std over seeds), and where the
    compute went. `every` is the experiment's rows, read from its results if not given."""
    every = experiment_rows(cfg) if every is None else every
    # HAM's row is its tuning point with the best source-validation accuracy, per cell; the
    # sensitivity table shows every point as measured.
    rows = select_by_validation(every)
    lines = [
        f"# {cfg.data.dataset} on 2 CPU cores (`dgmerge bench pacs-cpu"
        f"{'' if cfg.data.dataset == 'PACS' else ' --dataset ' + cfg.data.dataset}`)", "",
        f"- Setting: {setting_line(cfg)}.",
        "- Protocol: DomainBed leave-one-domain-out, training-domain validation (80/20 split of each "
        "source) for checkpoints; the held-out domain is scored in full and never used for selection.",
        *([f"- HAM's tuning: the points that train (λ) are chosen per held-out domain on seed(s) "
           f"{cfg.ham_tuning_seeds}'s source validation and reused on the other seeds; each cell picks "
           "r (a merge-time point) itself."] if cfg.ham_tuning_seeds is not None else []),
        f"- Code {code_version()}, torch {torch.__version__}, rendered on {cpu_model()} with {os.cpu_count()} CPUs, "
        f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC}; this invocation ({part}) took "
        f"{wall_time_s / 60:.1f} min.", "",
        "## Accuracy (%) per held-out domain, mean ± std over seeds", "",
        _table(rows, MAIN_ROWS), "",
        "## Choosing a row on source validation (the target: ERM + 2.0 Avg)", "",
        selection_markdown(rows, MAIN_ROWS), "",
        "## Source-validation accuracy (%) per held-out domain, mean ± std over seeds", "",
        _table(rows, MAIN_ROWS, metric="val_acc"), "",
        "## Diagnostics: update norms over the trained tensors, HAM's borrowing and sign conflicts", "",
        diagnostics_markdown(rows, MAIN_ROWS), "",
        "## HAM ablations", "",
        _table(rows, ablation_labels(every)), "",
        "Each ablation minus the reference, paired on the seeds both have (held-out / source val, "
        "points; a one-seed ablation reads against the reference's same seed):", "",
        paired_markdown(every, "ham:reference", _paired_labels(every)), "",
        "## HAM sensitivity (every tuning point and λ point, as measured)", "",
        _table(every, {r["method"]: r["method"] for r in every
                       if r["method"].startswith("ham:") and r["method"] not in ABLATION_ROWS}), "",
        "## Where the compute went (worker-hours recorded in the rows; each training counted once)", "",
        compute_markdown(every), "",
        "The machines the rows record (a resumed run may span several):", "",
        machines_markdown(every),
    ]
    return "\n".join(lines) + "\n"


def ablation_labels(rows: list[dict[str, Any]]) -> dict[str, str]:
    """The ablation table's rows: ABLATION_ROWS' ones, then any other HAM variant that is not a
    tuning point (a config's own, e.g. λ 0.01 or λ 10), labelled by what it changes and, where it
    runs on some seeds only, which."""
    labels = dict(ABLATION_ROWS)
    for row in rows:
        method, variant = row["method"], row.get("variant") or {}
        if method.startswith("ham:") and method not in labels and not variant.get("tuning"):
            changes = ", ".join(f"{key} = {value}" for key, value in (variant.get("set") or {}).items())
            label = f"{method.removeprefix('ham:')}: {changes or 'as configured'}"
            if seeds := variant.get("seeds"):
                label += f" (seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))} only)"
            labels[method] = label
    return labels


def _paired_labels(rows: list[dict[str, Any]]) -> dict[str, str]:
    """The ablation rows to pair with the reference: every ablation but HAM and the reference."""
    return {m: label for m, label in ablation_labels(rows).items() if m not in ("ham", "ham:reference")}


def _table(rows: list[dict[str, Any]], labels: dict[str, str], metric: str = "test_acc") -> str:
    chosen = [{**r, "method": labels[r["method"]]} for r in rows if r["method"] in labels]
    if not chosen:
        return "(no rows yet)"
    order = list(labels.values())
    (table,) = build_tables(sorted(chosen, key=lambda r: order.index(r["method"])), metric)
    # Drop the dataset heading: the report's own headings say what the table is.
    return to_markdown(table).split("\n", 2)[2]
