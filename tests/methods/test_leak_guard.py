"""No test-domain image reaches training, the head, statistics or model selection: a sample planted
in each path is refused, whatever dict key it hides under."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.utils.data import ConcatDataset, Subset

from dgmerge.config import BackboneConfig, DataConfig, ExperimentConfig, ProbeConfig, TrainConfig
from dgmerge.data.environments import DataLeakError
from dgmerge.data.imagefolder import scan_domains
from dgmerge.methods import build as cell_build
from dgmerge.methods import cell as cell_module
from dgmerge.methods import get_experiment
from dgmerge.methods.build import build_cell


def config(root: Path, out: Path) -> ExperimentConfig:
    return ExperimentConfig(output_dir=out, seeds=[0], save_models=False,
                            data=DataConfig(root=root, dataset="Shapes", test_domains=["outline"]),
                            backbone=BackboneConfig(kind="tiny_cnn", name="tiny", image_size=32),
                            probe=ProbeConfig(epochs=2, batch_size=32),
                            train=TrainConfig(steps=1, batch_size=4, trainable="last:2", feature_cache="memory"))


@pytest.fixture
def cell(tiny_shapes, tmp_path):
    cfg = config(tiny_shapes, tmp_path / "run")
    made = build_cell(cfg, scan_domains(tiny_shapes / "Shapes"), "outline", 0, "key")
    made.log = lambda _: None
    return made


def planted(cell, source: str):
    """`source`'s data with one test-domain image appended (same kind of dataset)."""
    return ConcatDataset([cell.train_sets[source], Subset(cell.test_set, [0])])


def test_the_cell_holds_every_test_image_path(cell, tiny_shapes):
    assert len(cell.test_paths) == len(scan_domains(tiny_shapes / "Shapes").samples["outline"])
    assert all("/outline/" in p for p in cell.test_paths)


def test_training_refuses_a_planted_test_image(cell):
    cell.train_sets["solid"] = planted(cell, "solid")
    with pytest.raises(DataLeakError, match="reached training"):
        get_experiment("erm").run(cell)
    with pytest.raises(DataLeakError, match="reached training"):
        get_experiment("single_source").run(cell)
    with pytest.raises(DataLeakError, match="reached HAM's training"):
        get_experiment("ham").run(cell)


def test_model_selection_refuses_the_test_set_passed_as_a_source(cell, monkeypatch):
    # The mutation issue 13 names: HAM validated on the test set, under a source's key.
    cell.val_sets = {"solid": cell.test_set, "noisy": cell.val_sets["noisy"]}
    seen = []
    monkeypatch.setattr(cell_module, "train_ham", lambda *a, **k: seen.append(a))
    with pytest.raises(DataLeakError, match="reached HAM's model selection"):
        cell.train_ham(cell.cfg.ham, "ham")
    with pytest.raises(DataLeakError, match="reached model selection"):
        cell.fine_tune({"solid": cell.train_sets["solid"]}, "source solid")
    assert seen == []


def test_ham_is_handed_the_source_out_splits_only(cell, monkeypatch):
    received = {}

    def spy(theta, train_sets, val_sets, *args, **kwargs):
        received.update(train=train_sets, val=val_sets)
        raise RuntimeError("stop")

    monkeypatch.setattr(cell_module, "train_ham", spy)
    with pytest.raises(RuntimeError, match="stop"):
        cell.train_ham(cell.cfg.ham, "ham")
    for name, data in received["val"].items():
        assert {p for p, _ in data.samples} == {p for p, _ in cell.envs.train_out[name]}
    assert set(received["val"]) == set(received["train"]) == {"solid", "noisy"}


def test_the_probe_head_refuses_a_planted_test_image(cell, monkeypatch, tiny_shapes):
    real = cell_build.make_environments

    def leaky(*args, **kwargs):
        envs = real(*args, **kwargs)
        envs.check_no_leak()
        envs.train_in["solid"] = [*envs.train_in["solid"], envs.test[0]]
        envs.check_no_leak = lambda: None  # the split-level check is the first line; this tests the second
        return envs

    monkeypatch.setattr(cell_build, "make_environments", leaky)
    with pytest.raises(DataLeakError, match="reached the probe head"):
        build_cell(cell.cfg, scan_domains(tiny_shapes / "Shapes"), "outline", 0, "key")


def test_gating_statistics_refuse_a_planted_test_image(cell):
    cell.cfg.gating.gate_steps = 1
    cell.source_runs()  # trained on clean data
    cell.train_sets["noisy"] = planted(cell, "noisy")
    with pytest.raises(DataLeakError, match="reached RegMean's Gram statistics and the gate"):
        get_experiment("gating").run(cell)
    assert torch.is_tensor(cell.test_set[0][0])
