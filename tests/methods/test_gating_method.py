"""The gating experiment method in the shared loop, end to end on tiny generated data."""

from __future__ import annotations

from pathlib import Path

import pytest

from dgmerge.config import ExperimentConfig
from dgmerge.config.gating import GatingConfig
from dgmerge.evaluation.results import read_results
from dgmerge.methods import cell as cell_module
from dgmerge.pipeline.experiment import run_experiment
from dgmerge.reports.gating_table import render_gating_dg

from tiny import tiny_experiment


def config(root: Path, out: Path, methods: list[str]) -> ExperimentConfig:
    return tiny_experiment(root, out, methods=methods,
                           train={"lr": 1e-2, "trainable": "last:2", "feature_cache": "memory"},
                           gating=GatingConfig(ms=[0, 1], gate_steps=2, gate_batch=4, gram_batches=1))


def test_gating_rows_reuse_the_cells_source_models_and_resume(tiny_shapes, tmp_path, monkeypatch):
    trained: list[str] = []
    real = cell_module.fine_tune

    def spy(model, train_sets, *args, **kwargs):
        trained.append(",".join(train_sets))
        return real(model, train_sets, *args, **kwargs)

    monkeypatch.setattr(cell_module, "fine_tune", spy)
    cfg = config(tiny_shapes, tmp_path / "run", ["single_source", "merge", "gating"])
    rows = run_experiment(cfg, log=lambda _: None)
    # One model per source, trained once and shared by single_source, merge and gating.
    assert sorted(trained) == ["noisy", "solid"]
    gating = [r for r in rows if r["method_group"] == "gating"]
    assert [r["method"] for r in gating] == [
        "gating:average", "gating:regmean", "gating:task_arithmetic", "gating:average:m0", "gating:average:m1",
        "gating:regmean:m0", "gating:regmean:m1", "gating:individual"]
    by = {r["method"]: r for r in gating}
    # The experts share the head, so with m = 0 the gate changes nothing; gating blocks adds parameters.
    assert by["gating:average:m0"]["test_acc"] == by["gating:average"]["test_acc"]
    assert by["gating:average:m1"]["params"] > by["gating:average:m0"]["params"] > by["gating:average"]["params"]
    # The plain AvgMean row is the merge method's average of the same models.
    merged = next(r for r in rows if r["method"] == "merge:average")
    assert by["gating:average"]["test_acc"] == pytest.approx(merged["test_acc"])
    # The individual row is the mean of the single-source rows (same models, same test set).
    singles = [r["test_acc"] for r in rows if r["method"].startswith("source:")]
    assert by["gating:individual"]["test_acc"] == pytest.approx(sum(singles) / len(singles))
    assert all(r["test_domain"] == "outline" and "outline" not in r["split"]["sources"] for r in gating)
    # What `dgmerge merge --method gating` needs is saved beside the models.
    cell_dir = tmp_path / "run" / "models" / "seed0" / "outline"
    for name in ("gate", "grams_noisy", "grams_solid", "source_noisy", "linear_probe"):
        assert (cell_dir / f"{name}.safetensors").is_file(), name
    table = render_gating_dg(read_results(tmp_path / "run" / "results.jsonl"), ["outline"])
    assert "| Ours + RegMean, m = 1 |" in table and "| AvgMean |" in table
    # A rerun trains nothing and appends nothing.
    trained.clear()
    assert run_experiment(cfg, log=lambda _: None) == [] and trained == []


def test_gating_without_a_feature_cache_says_what_to_set(tiny_shapes, tmp_path):
    cfg = config(tiny_shapes, tmp_path / "run", ["gating"])
    cfg.train.feature_cache = "off"
    cfg.methods = ["erm", "gating"]
    with pytest.raises(ValueError, match="feature_cache"):
        run_experiment(cfg, log=lambda _: None)
    assert not (tmp_path / "run").exists()  # refused before any method ran


def test_shipped_gating_configs_load():
    from dgmerge.config import ConfigError, load_config

    dg = load_config("gating_pacs_dg")
    mt = load_config("multitask_pacs_digits")
    assert dg.methods == ["gating"] and dg.gating.ms == [0, 1, 3, 5] and dg.gating.gate_fraction <= 0.15
    assert mt.tasks is not None and {len(c) for c in mt.tasks.combos} == {2, 3, 4}
    with pytest.raises(ConfigError, match="gate_fraction"):
        load_config("gating_pacs_dg", {"gating.gate_fraction": 0.5})
    with pytest.raises(ConfigError, match="mz"):
        load_config("gating_pacs_dg", {"gating.mz": [1]})
