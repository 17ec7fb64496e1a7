"""The experiment-method registry: a new method is one registered function; the loop stays blind to it."""

from __future__ import annotations

from pathlib import Path

import pytest

from dgmerge.config import BackboneConfig, DataConfig, ExperimentConfig, ProbeConfig, TrainConfig
from dgmerge.methods import EXPERIMENTS, get_experiment, in_run_order, register_experiment
from dgmerge.pipeline.experiment import run_experiment


@pytest.fixture
def probe_twice():
    """A throwaway method registered for one test: θ0 scored under another row name."""
    calls: list[str] = []

    @register_experiment("probe_twice", order=5, summary="θ0 again, as a second row")
    def run(cell):
        calls.append(cell.test_domain)
        return [cell.record("probe_twice", cell.theta0, 0.0, {})]

    yield calls
    EXPERIMENTS.pop("probe_twice")


def config(root: Path, out: Path, methods: list[str]) -> ExperimentConfig:
    return ExperimentConfig(output_dir=out, seeds=[0], methods=methods, save_models=False,
                            data=DataConfig(root=root, dataset="Shapes", test_domains=["outline", "noisy"]),
                            backbone=BackboneConfig(kind="tiny_cnn", name="tiny", image_size=32),
                            probe=ProbeConfig(epochs=2, batch_size=32), train=TrainConfig(steps=1, batch_size=4))


def test_a_registered_method_runs_in_every_cell_in_its_order_and_resumes(tiny_shapes, tmp_path, probe_twice):
    cfg = config(tiny_shapes, tmp_path / "run", ["probe_twice", "linear_probe"])
    rows = run_experiment(cfg, log=lambda _: None)
    # Registered order, not the config's: linear_probe (0) before probe_twice (5), in each cell.
    assert [(r["test_domain"], r["method"]) for r in rows] == [
        ("outline", "linear_probe"), ("outline", "probe_twice"), ("noisy", "linear_probe"), ("noisy", "probe_twice")]
    assert rows[0]["test_acc"] == rows[1]["test_acc"]  # the same θ0, scored twice
    assert probe_twice == ["outline", "noisy"]
    assert run_experiment(cfg, log=lambda _: None) == [] and probe_twice == ["outline", "noisy"]


def test_unknown_names_and_aliases_twice_are_refused_before_any_work(tiny_shapes, tmp_path):
    with pytest.raises(ValueError, match="unknown experiment method 'ermm'; registered: linear_probe"):
        run_experiment(config(tiny_shapes, tmp_path / "a", ["ermm"]), log=lambda _: None)
    with pytest.raises(ValueError, match="an alias and its name"):
        run_experiment(config(tiny_shapes, tmp_path / "b", ["zero_shot", "linear_probe"]), log=lambda _: None)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_registry_order_aliases_and_a_second_registration():
    assert get_experiment("zero_shot") is get_experiment("linear_probe")
    assert in_run_order(["gating", "ham", "erm", "ham_variants", "merge", "single_source", "linear_probe"]) == [
        "linear_probe", "erm", "single_source", "merge", "ham", "ham_variants", "gating"]
    with pytest.raises(ValueError, match="already registered"):
        register_experiment("erm", order=1, summary="another erm")(lambda cell: [])
