"""The tiny experiment that the end-to-end tests run: the tiny CNN on the generated Shapes
dataset (conftest's `tiny_shapes`, or a test's own), one seed, a few steps.

Importable from every test module (`pythonpath = ["tests"]` in pyproject.toml); conftest itself
is not importable."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

from dgmerge.config import BackboneConfig, DataConfig, ExperimentConfig, HamConfig, ProbeConfig, TrainConfig
from dgmerge.methods import cell as cell_module

TRAIN = {"steps": 3, "batch_size": 4, "lr": 1e-3, "eval_every": 2, "eval_batch_size": 64}


def tiny_experiment(root: Path, out: Path, *, test_domains: Sequence[str] | None = ("outline",),
                    backbone: dict[str, Any] | None = None, probe: dict[str, Any] | None = None,
                    train: dict[str, Any] | None = None, **fields: Any) -> ExperimentConfig:
    """Seed 0 of Shapes under `root`, outline held out, the tiny CNN with a 5-epoch probe and
    3 training steps; `backbone`, `probe` and `train` override single fields of those sections,
    `fields` any other field of the experiment (methods, merges, ham, ...)."""
    return ExperimentConfig(**{
        "output_dir": out, "seeds": [0],
        "data": DataConfig(root=root, dataset="Shapes",
                           test_domains=None if test_domains is None else list(test_domains)),
        "backbone": BackboneConfig(**{"kind": "tiny_cnn", "name": "tiny", **(backbone or {})}),
        "probe": ProbeConfig(**{"epochs": 5, "batch_size": 32, **(probe or {})}),
        "train": TrainConfig(**{**TRAIN, **(train or {})}),
        **fields})


def record_ham_trainings(monkeypatch, what: Callable[[HamConfig, int], Any]) -> list[Any]:
    """The list that `what(ham_cfg, seed)` of every HAM training the cells start is appended to
    (the trainings still run)."""
    trained: list[Any] = []
    real = cell_module.train_ham

    def spy(theta, train_sets, val_sets, train_cfg, ham_cfg, seed, **kw):
        trained.append(what(ham_cfg, seed))
        return real(theta, train_sets, val_sets, train_cfg, ham_cfg, seed, **kw)

    monkeypatch.setattr(cell_module, "train_ham", spy)
    return trained
