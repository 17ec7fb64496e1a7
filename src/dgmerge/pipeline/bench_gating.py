"""`dgmerge bench gating-dg` and `dgmerge bench multitask`: the gating merge of Ye et al.

Both benchmarks are ordinary experiments running the `gating` experiment method through the
shared loop: `gating_pacs_dg` on every (seed, held-out PACS domain) cell (Table 6 layout),
`multitask_pacs_digits` on every (seed, task combination) cell of its `tasks:` section
(Tables 3-4 layout). Splits, θ0, the frozen probe heads, the feature cache, the experts (the
single-source models) and resume are the same as every other method's. This module only
fills in where the inputs are and renders the tables.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from dgmerge.atomic import write_text_atomic
from dgmerge.config import ExperimentConfig
from dgmerge.data.imagefolder import scan_domains
from dgmerge.pipeline.experiment import experiment_rows, load_experiment, run_experiment, scope_overrides
from dgmerge.reports.gating_multitask_table import render_gating_multitask
from dgmerge.reports.gating_table import render_gating_dg

Log = Callable[[str], None]
DG_CONFIG = "gating_pacs_dg"
MULTITASK_CONFIG = "multitask_pacs_digits"


@dataclass
class GatingBenchOptions:
    """Inputs and scope of a run; None means the shipped config's value."""

    data: Path = Path("../shared/data/PACS")
    weights: Path = Path("../shared/weights/mobilenetv2_100_imagenet_tflite.safetensors")
    out: Path = Path("runs/gating-dg")
    cache_dir: Path = Path("runs/feature_cache")
    config: Path | None = None
    seeds: list[int] | None = None
    test_domains: list[str] | None = None
    steps: int | None = None
    overrides: dict[str, Any] = field(default_factory=dict)


def bench_config(opts: GatingBenchOptions, default: str) -> ExperimentConfig:
    """The benchmark's experiment config with the options applied (validated like any config)."""
    if not Path(opts.data).is_dir():
        raise FileNotFoundError(f"--data {opts.data}: no such folder; pass PACS in DomainBed layout")
    if not Path(opts.weights).is_file():
        raise FileNotFoundError(f"--weights {opts.weights}: no such file; pass the MobileNetV2 safetensors "
                                "(../shared/weights/mobilenetv2_100_imagenet_tflite.safetensors)")
    overrides: dict[str, Any] = {"data.root": str(Path(opts.data).parent), "data.dataset": Path(opts.data).name,
                                 "backbone.checkpoint": str(opts.weights), "output_dir": str(opts.out),
                                 "train.feature_cache_dir": str(opts.cache_dir)}
    overrides.update(scope_overrides(opts.seeds, opts.test_domains, opts.steps))
    overrides.update(opts.overrides)
    return load_experiment(opts.config or default, overrides)


def run_gating_bench(opts: GatingBenchOptions, default: str = DG_CONFIG, log: Log = print) -> Path:
    """Run every cell not yet in <out>/results.jsonl, write <out>/table.md and return its path.

    `default` is the shipped config used when `opts.config` is None: DG_CONFIG or MULTITASK_CONFIG.
    """
    cfg = bench_config(opts, default)
    start = time.perf_counter()
    run_experiment(cfg, log=log)
    rows = experiment_rows(cfg)
    if cfg.tasks is not None:
        table = render_gating_multitask(rows)
    else:
        table = render_gating_dg(rows, list(scan_domains(cfg.data.root / cfg.data.dataset).domains))
    write_text_atomic(cfg.output_dir / "table.md", table)
    log(table)
    log(f"wall time {time.perf_counter() - start:.0f} s")
    return cfg.output_dir / "table.md"
