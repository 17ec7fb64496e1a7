"""probe.fit_on: probe_split — the probe head is fitted on samples fine-tuning and SAE never see."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dgmerge.config import BackboneConfig, DataConfig, ExperimentConfig, ProbeConfig, TrainConfig
from dgmerge.data.imagefolder import scan_domains
from dgmerge.methods import build as cell_build
from dgmerge.methods.build import build_cell
from dgmerge.training import ham as ham_module


def config(root: Path, out: Path, fit_on: str, cache: str = "memory") -> ExperimentConfig:
    return ExperimentConfig(output_dir=out, seeds=[0], save_models=False,
                            data=DataConfig(root=root, dataset="Shapes", test_domains=["outline"]),
                            backbone=BackboneConfig(kind="tiny_cnn", name="tiny", image_size=32),
                            probe=ProbeConfig(epochs=2, batch_size=32, fit_on=fit_on, split_fraction=0.25),
                            train=TrainConfig(steps=2, batch_size=4, trainable="last:2", feature_cache=cache))


def paths(dataset) -> set[str]:
    return {os.path.abspath(path) for path, _ in dataset.samples}


@pytest.mark.parametrize("cache", ["memory", "off"])
def test_the_probe_split_is_disjoint_from_what_trains_and_what_sae_scores(tiny_shapes, tmp_path, monkeypatch, cache):
    fitted: list[int] = []
    real_extract = cell_build.extract_features

    def spy(encoder, data, *args, **kwargs):
        fitted.append(len(data))
        return real_extract(encoder, data, *args, **kwargs)

    monkeypatch.setattr(cell_build, "extract_features", spy)
    cfg = config(tiny_shapes, tmp_path / "run", "probe_split", cache)
    cell = build_cell(cfg, scan_domains(tiny_shapes / "Shapes"), "outline", 0, "key")
    trained = set().union(*(paths(d) for d in cell.train_sets.values()))
    assert cell.probe_paths and not cell.probe_paths & trained
    # Together they are the sources' training splits, and the probe saw exactly its split.
    assert cell.probe_paths | trained == {os.path.abspath(p) for d in cell.envs.sources for p, _ in cell.envs.train_in[d]}
    assert fitted == [len(cell.probe_paths)] and set().union(*(paths(d) for d in cell.probe_sets.values())) == cell.probe_paths
    # SAE scores the foreign samples of HAM's batches, drawn from the streams HAM opens.
    cell.log = lambda _: None
    seen = []
    real_stream = ham_module.BatchStream

    class Recording(real_stream):
        def __init__(self, dataset, *args, **kwargs):
            seen.append(paths(dataset))
            super().__init__(dataset, *args, **kwargs)

    monkeypatch.setattr(ham_module, "BatchStream", Recording)
    cell.train_ham(cfg.ham, "ham")
    scored = set().union(*seen)
    assert scored and not scored & cell.probe_paths


def test_by_default_the_probe_is_fitted_on_the_training_splits(tiny_shapes, tmp_path):
    cell = build_cell(config(tiny_shapes, tmp_path / "run", "train"), scan_domains(tiny_shapes / "Shapes"),
                      "outline", 0, "key")
    trained = set().union(*(paths(d) for d in cell.train_sets.values()))
    assert cell.probe_paths == trained  # the overlap the probe split removes


def test_a_split_that_leaves_a_source_empty_is_refused(tiny_shapes, tmp_path):
    cfg = config(tiny_shapes, tmp_path / "run", "probe_split")
    cfg.probe.split_fraction = 0.01
    with pytest.raises(ValueError, match="leaves no probe samples"):
        build_cell(cfg, scan_domains(tiny_shapes / "Shapes"), "outline", 0, "key")
