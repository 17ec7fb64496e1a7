"""Sweeps: variants from grid and random search, one job each, resumable, selected by validation."""


import pytest
import yaml
from typer.testing import CliRunner

from dgmerge.cli.main import app
from dgmerge.config import HAM_SPACE, ConfigError
from dgmerge.data.synthetic import generate_synthetic
from dgmerge.pipeline.sweep import SweepSpec, plan_jobs, run_sweep, select_by_validation, variants


def test_grid_is_the_cartesian_product_in_order():
    spec = SweepSpec(grid={"train.lr": [1e-4, 1e-3], "ham.opa_weight": [0.1, 0.5]})
    assert variants(spec) == [{"train.lr": 1e-4, "ham.opa_weight": 0.1}, {"train.lr": 1e-4, "ham.opa_weight": 0.5},
                              {"train.lr": 1e-3, "ham.opa_weight": 0.1}, {"train.lr": 1e-3, "ham.opa_weight": 0.5}]


def test_random_search_is_seeded_and_inside_the_ham_space():
    spec = SweepSpec(trials=5, space="ham", seed=3)
    draws = variants(spec)
    assert draws == variants(SweepSpec(trials=5, space="ham", seed=3))
    assert draws != variants(SweepSpec(trials=5, space="ham", seed=4))
    for draw in draws:
        assert set(draw) == set(HAM_SPACE) and all(draw[k] in HAM_SPACE[k] for k in draw)


def test_every_variant_is_validated_before_any_job_runs(tmp_path):
    spec = SweepSpec(grid={"train.lr": [1e-4, -1.0]})
    with pytest.raises(ConfigError, match="train.lr"):
        plan_jobs({"output_dir": str(tmp_path)}, spec)
    assert not (tmp_path / "jobs").exists()


def test_selection_uses_validation_never_test():
    rows = [
        {"dataset": "D", "test_domain": "t", "seed": 0, "method": "erm", "val_acc": 0.6, "test_acc": 0.9, "job": "a"},
        {"dataset": "D", "test_domain": "t", "seed": 0, "method": "erm", "val_acc": 0.8, "test_acc": 0.1, "job": "b"},
        {"dataset": "D", "test_domain": "t", "seed": 0, "method": "mean", "val_acc": float("nan"), "test_acc": 0.5,
         "job": "c"},
    ]
    chosen = {r["method"]: r["job"] for r in select_by_validation(rows)}
    assert chosen == {"erm": "b", "mean": "c"}


def test_tuning_points_compete_with_their_method_and_the_winner_is_named():
    base = {"dataset": "D", "test_domain": "t", "seed": 0}
    rows = [
        {**base, "method": "ham", "val_acc": 0.70, "test_acc": 0.9, "job": "a"},
        {**base, "method": "ham:r0.4", "tuning_of": "ham", "val_acc": 0.75, "test_acc": 0.2, "job": "a"},
        {**base, "method": "ham", "val_acc": 0.72, "test_acc": 0.8, "job": "b"},
        {**base, "method": "ham:no_sae", "val_acc": 0.99, "test_acc": 0.5, "job": "a"},  # an ablation: its own row
    ]
    chosen = {r["method"]: r for r in select_by_validation(rows)}
    assert set(chosen) == {"ham", "ham:no_sae"}
    assert chosen["ham"]["selected_variant"] == "ham:r0.4" and chosen["ham"]["test_acc"] == 0.2
    assert rows[1]["method"] == "ham:r0.4"  # the input rows are left as they were


def test_sweep_runs_jobs_once_and_reports(tmp_path):
    root = tmp_path / "data"
    generate_synthetic(root, name="Shapes", domains=("solid", "outline", "noisy"), images_per_class=4, seed=0)
    config = {
        "output_dir": str(tmp_path / "sweep"), "seeds": [0], "methods": ["erm"],
        "data": {"root": str(root), "dataset": "Shapes", "test_domains": ["noisy"]},
        "backbone": {"kind": "tiny_cnn", "name": "tiny"},
        "probe": {"epochs": 2}, "train": {"steps": 2, "batch_size": 4, "eval_every": 2},
        "sweep": {"grid": {"train.lr": [1e-4, 1e-3]}},
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(config))
    logs: list[str] = []
    out = run_sweep(path, log=logs.append)
    jobs = sorted(p for p in (out / "jobs").iterdir())
    assert len(jobs) == 2 and all((job / "done").exists() for job in jobs)
    assert all((job / "results.jsonl").exists() and (job / "config.json").exists() for job in jobs)

    rerun: list[str] = []
    run_sweep(path, log=rerun.append)
    assert sum("done already" in line for line in rerun) == 2

    result = CliRunner().invoke(app, ["report", str(out)])
    assert result.exit_code == 0, result.output
    assert "| erm |" in result.output
    every = CliRunner().invoke(app, ["report", str(out), "--select", "none"])
    assert every.exit_code == 0


def test_sweep_cli_rejects_a_bad_sweep_section(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("sweep:\n  grid: {train.lr: []}\n")
    result = CliRunner().invoke(app, ["sweep", str(path)])
    assert result.exit_code == 2 and "non-empty" in result.output
