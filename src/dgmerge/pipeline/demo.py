"""`dgmerge demo`: the whole pipeline end to end, on the embedded default or on real data.

Embedded default (no downloads, no files from outside the install): generate a small
multi-domain shapes dataset, pretrain a tiny CNN on a separate generated domain (θ0), then
for each held-out domain run the linear probe, ERM, one model per source domain, their
merges (average, Task Arithmetic, TIES, RHM) and HAM, and print the results table.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from dgmerge.config import (BackboneConfig, DataConfig, ExperimentConfig, MergeSpec, ProbeConfig, TrainConfig,
                            shared_mobilenetv2_config)
from dgmerge.data.synthetic import generate_synthetic
from dgmerge.evaluation.results import read_results
from dgmerge.atomic import write_text_atomic
from dgmerge.pipeline.experiment import run_experiment
from dgmerge.pipeline.pretrain import pretrain_backbone
from dgmerge.reports.table import build_tables, to_markdown

SYNTHETIC_NAME = "Shapes"
METHODS = ["linear_probe", "erm", "single_source", "merge", "ham"]
SYNTHETIC_STEPS = 80
REAL_STEPS = 150


def default_merges() -> list[MergeSpec]:
    """The merges the demo compares: plain averaging, Task Arithmetic, TIES and HAM's RHM."""
    return [MergeSpec(method="average"), MergeSpec(method="task_arithmetic", hparams={"scale": 0.5}),
            MergeSpec(method="ties", hparams={"keep": 0.2}), MergeSpec(method="rhm", hparams={"trim": 0.2})]
PRETRAIN_NAME = "ShapesPretrain"


def synthetic_config(out_dir: Path, steps: int = SYNTHETIC_STEPS, seeds: list[int] | None = None,
                     images_per_class: int = 40) -> ExperimentConfig:
    """The embedded default experiment (data and θ0 are created by `prepare_synthetic`)."""
    return ExperimentConfig(
        name="demo-synthetic",
        output_dir=out_dir,
        seeds=seeds or [0],
        data=DataConfig(root=out_dir / "data", dataset=SYNTHETIC_NAME, cache_images=True),
        backbone=BackboneConfig(kind="tiny_cnn", name="tiny", checkpoint=out_dir / "pretrained.safetensors"),
        probe=ProbeConfig(epochs=60, lr=1e-2, batch_size=128),
        # 1e-4: with BatchNorm statistics frozen, AdamW at 1e-3 blows the tiny CNN up in one step.
        train=TrainConfig(steps=steps, batch_size=24, lr=1e-4, weight_decay=0.1, trainable="all",
                          eval_every=max(1, steps // 4), eval_batch_size=256),
        methods=METHODS, merges=default_merges(),
    )


def prepare_synthetic(cfg: ExperimentConfig, images_per_class: int = 40, pretrain_steps: int = 300,
                      log: Callable[[str], None] = print) -> None:
    """Generate the demo datasets and pretrain θ0, unless they are already there."""
    data_root = cfg.data.root
    if not (data_root / SYNTHETIC_NAME).is_dir():
        log(f"generating the synthetic {SYNTHETIC_NAME} dataset in {data_root}")
        generate_synthetic(data_root, name=SYNTHETIC_NAME, images_per_class=images_per_class, seed=0)
    if not (data_root / PRETRAIN_NAME).is_dir():
        generate_synthetic(data_root, name=PRETRAIN_NAME, domains=("pretrain",),
                           images_per_class=images_per_class * 3, seed=1)
    checkpoint = cfg.backbone.checkpoint
    assert checkpoint is not None
    if not checkpoint.is_file():
        log(f"pretraining the demo backbone (θ0) on the separate {PRETRAIN_NAME} domain")
        pretrain_backbone(data_root / PRETRAIN_NAME, cfg.backbone.model_copy(update={"checkpoint": None}),
                          checkpoint, steps=pretrain_steps)


def real_config(data_dir: Path, weights: Path, out_dir: Path, steps: int, seeds: list[int],
                test_domains: list[str] | None, max_images: int | None, trainable: str) -> ExperimentConfig:
    """The same pipeline on a real DomainBed dataset with the ImageNet MobileNetV2 (TF-converted)."""
    return ExperimentConfig(
        name=f"demo-{data_dir.name}",
        output_dir=out_dir,
        seeds=seeds,
        data=DataConfig(root=data_dir.parent, dataset=data_dir.name, test_domains=test_domains,
                        max_images_per_domain=max_images),
        backbone=shared_mobilenetv2_config(weights),
        probe=ProbeConfig(epochs=30, lr=1e-3, batch_size=256),
        # The frozen prefix runs once per image; only the last blocks train, on its cached output.
        train=TrainConfig(steps=steps, batch_size=24, lr=1e-4, trainable=trainable,
                          eval_every=max(1, steps // 3), eval_batch_size=64,
                          feature_cache="disk" if trainable.startswith("last:") else "off"),
        methods=METHODS, merges=default_merges(),
    )


def run_demo(cfg: ExperimentConfig, log: Callable[[str], None] = print) -> str:
    """Run the experiment, write report.md next to results.jsonl, and return the table."""
    run_experiment(cfg, log=log)
    results = cfg.output_dir / "results.jsonl"
    markdown = "\n".join(to_markdown(t) for t in build_tables(read_results(results)))
    write_text_atomic(cfg.output_dir / "report.md", markdown)
    return markdown
