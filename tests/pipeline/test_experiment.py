"""End to end on tiny generated data: every method runs, rows are complete, the target never leaks."""

from pathlib import Path

import pytest
import torch

from dgmerge.config import BackboneConfig, DataConfig, ExperimentConfig, MergeSpec, ProbeConfig, TrainConfig
from typer.testing import CliRunner

from dgmerge.cli.main import app
from dgmerge.evaluation.results import REQUIRED_FIELDS, read_results
from dgmerge.methods import cell as cell_module
from dgmerge.methods import build as cell_build
from dgmerge.pipeline import experiment
from dgmerge.evaluation.saved_models import score_model



def config(root: Path, out: Path, **kw) -> ExperimentConfig:
    return ExperimentConfig(
        output_dir=out, seeds=[0],
        data=DataConfig(root=root, dataset="Shapes", test_domains=["outline"]),
        backbone=BackboneConfig(kind="tiny_cnn", name="tiny"),
        probe=ProbeConfig(epochs=5, batch_size=32),
        train=TrainConfig(steps=3, batch_size=4, lr=1e-3, eval_every=2, eval_batch_size=64), **kw)


def test_all_methods_rows_models_and_resume(tiny_shapes, tmp_path, monkeypatch):
    seen_paths: list[str] = []
    real_fine_tune = cell_module.fine_tune
    real_features = cell_build.extract_features

    def spy_fine_tune(model, train_sets, val_sets, cfg, seed, **kwargs):
        for data in [*train_sets.values(), *val_sets.values()]:
            seen_paths.extend(str(p) for p, _ in data.samples)
        return real_fine_tune(model, train_sets, val_sets, cfg, seed, **kwargs)

    def spy_features(encoder, dataset, *args, **kwargs):
        for part in dataset.datasets:
            seen_paths.extend(str(p) for p, _ in part.samples)
        return real_features(encoder, dataset, *args, **kwargs)

    monkeypatch.setattr(cell_module, "fine_tune", spy_fine_tune)
    monkeypatch.setattr(cell_build, "extract_features", spy_features)
    cfg = config(tiny_shapes, tmp_path / "run")
    cfg.merges = [MergeSpec(method="average"), MergeSpec(method="rhm", hparams={"trim": 0.2}),
                  MergeSpec(method="ties", hparams={"keep": 0.5}, label="ties-k0.5")]
    rows = experiment.run_experiment(cfg, log=lambda _: None)

    methods = [r["method"] for r in rows]
    assert methods == ["linear_probe", "erm", "source:noisy", "source:solid", "single_source_mean",
                       "merge:average", "merge:rhm", "merge:ties-k0.5"]
    assert next(r for r in rows if r["method"] == "merge:rhm")["merge_hparams"] == {"trim": 0.2}
    # The target domain fed nothing to training, the probe head or model selection.
    assert seen_paths and not [p for p in seen_paths if "/outline/" in p]
    for row in rows:
        assert all(field in row for field in REQUIRED_FIELDS)
        assert row["test_domain"] == "outline" and "outline" not in row["split"]["sources"]
        assert 0.0 <= row["test_acc"] <= 1.0
    stored = read_results(tmp_path / "run" / "results.jsonl")
    assert [r["method"] for r in stored] == methods
    assert (tmp_path / "run" / "models" / "seed0" / "outline" / "merge_average.safetensors").is_file()
    assert (tmp_path / "run" / "logs" / "seed0" / "outline" / "erm.csv").is_file()

    # A saved model reloads from its own metadata and scores as it did in the run.
    scores = score_model(tmp_path / "run" / "models" / "seed0" / "outline" / "erm.safetensors",
                         tiny_shapes / "Shapes", ["outline"])
    erm_row = next(r for r in rows if r["method"] == "erm")
    assert scores["outline"][1] == pytest.approx(erm_row["test_acc"])

    # The saved files merge on the command line like any checkpoints, and the merged file
    # scores (with θ0's metadata) exactly as the run's own average merge did.
    cell_dir = tmp_path / "run" / "models" / "seed0" / "outline"
    result = CliRunner().invoke(app, ["merge", "--method", "average", "--pretrained", str(cell_dir / "linear_probe.safetensors"),
                                      "--out", str(tmp_path / "merged.safetensors"), "--models",
                                      str(cell_dir / "source_noisy.safetensors"), str(cell_dir / "source_solid.safetensors")])
    assert result.exit_code == 0, result.output
    merged_scores = score_model(tmp_path / "merged.safetensors", tiny_shapes / "Shapes", ["outline"],
                                like=cell_dir / "linear_probe.safetensors")
    average_row = next(r for r in rows if r["method"] == "merge:average")
    assert merged_scores["outline"][1] == pytest.approx(average_row["test_acc"])

    # Rerunning the same config resumes: nothing is trained again, nothing appended.
    assert experiment.run_experiment(cfg, log=lambda _: None) == []
    assert len(read_results(tmp_path / "run" / "results.jsonl")) == len(rows)


def test_unknown_test_domain_is_named(tiny_shapes, tmp_path):
    cfg = config(tiny_shapes, tmp_path / "run")
    cfg.data.test_domains = ["watercolor"]
    with pytest.raises(ValueError, match="watercolor"):
        experiment.run_experiment(cfg, log=lambda _: None)


def test_merge_of_identical_sources_is_that_model(tiny_shapes, tmp_path):
    # Sources that really moved away from θ0, all the same model: every merge must give it back.
    from dgmerge.data.imagefolder import scan_domains
    from dgmerge.methods import build_cell, get_experiment

    cfg = config(tiny_shapes, tmp_path / "run", methods=["merge"], save_models=False,
                 merges=[MergeSpec(method="average"), MergeSpec(method="ties", hparams={"keep": 1.0}),
                         MergeSpec(method="rhm", hparams={"trim": 0.0})])
    cell = build_cell(cfg, scan_domains(tiny_shapes / "Shapes"), "outline", 0, "key")
    cell.log = lambda _: None
    moved = cell.source_runs()[0]
    trained = cell.trained_keys()
    theta0 = cell.theta0.state_dict()
    assert max(float((moved.model.state_dict()[k] - theta0[k]).abs().max()) for k in trained) > 1e-3
    cell._sources = [moved, moved]
    merged_states = []
    real_loaded = cell.loaded
    cell.loaded = lambda state: merged_states.append(state) or real_loaded(state)
    rows = get_experiment("merge").run(cell)
    assert [r["method"] for r in rows] == ["merge:average", "merge:ties", "merge:rhm"]
    want = moved.model.state_dict()
    for state in merged_states:
        for key in want:
            torch.testing.assert_close(state[key], want[key], rtol=1e-6, atol=1e-6)


def test_merges_are_validated_in_the_config():
    with pytest.raises(ValueError, match="unknown merge method"):
        MergeSpec(method="soup")
    with pytest.raises(ValueError, match="fed by the `merge` experiment method"):
        MergeSpec(method="regmean", hparams={"grams": []})
    with pytest.raises(ValueError, match="keep"):
        MergeSpec(method="ties", hparams={"keep": 1.5})
    with pytest.raises(ValueError, match="kep"):
        MergeSpec(method="ties", hparams={"kep": 0.2})
    with pytest.raises(ValueError, match="distinct label"):
        ExperimentConfig(merges=[MergeSpec(method="ties"), MergeSpec(method="ties")])


def test_ham_runs_in_the_same_harness_and_logs_its_modules(tiny_shapes, tmp_path):
    cfg = config(tiny_shapes, tmp_path / "run", methods=["ham"])
    cfg.ham.merge_hparams = {"trim": 0.2}
    (row,) = experiment.run_experiment(cfg, log=lambda _: None)
    assert row["method"] == "ham" and row["hparams"]["ham"]["merge_method"] == "rhm"
    assert row["merged_from"] == "historical"
    log = (tmp_path / "run" / "logs" / "seed0" / "outline" / "ham.csv").read_text().splitlines()
    header = log[0].split(",")
    assert {"tau/noisy", "tau/solid", "borrow/noisy<-solid", "loss_sign/solid", "sign_conflict"} <= set(header)
    assert len(log) == 1 + cfg.train.steps


def test_interrupted_experiment_resumes_from_its_checkpoint(tiny_shapes, tmp_path, monkeypatch):
    from dgmerge.training.checkpoint import Checkpointer

    class Killed(Exception):
        pass

    def run(out, kill):
        cfg = config(tiny_shapes, out, methods=["erm"])
        cfg.train.steps, cfg.train.checkpoint_every = 4, 2
        original = Checkpointer.save

        def save_then_die(self, payload):
            original(self, payload)
            if kill:
                raise Killed

        monkeypatch.setattr(Checkpointer, "save", save_then_die)
        return experiment.run_experiment(cfg, log=lambda _: None)

    (uninterrupted,) = run(tmp_path / "a", kill=False)
    with pytest.raises(Killed):
        run(tmp_path / "b", kill=True)
    assert list((tmp_path / "b" / "checkpoints").rglob("erm.pt"))
    (resumed,) = run(tmp_path / "b", kill=False)
    assert resumed["test_acc"] == pytest.approx(uninterrupted["test_acc"])
    assert resumed["best_step"] == uninterrupted["best_step"]
    assert not list((tmp_path / "b" / "checkpoints").rglob("*.pt"))


def test_ham_variants_reuse_training_only_where_the_models_are_the_same(tiny_shapes, tmp_path, monkeypatch):
    from dgmerge.config import HamVariant

    trained: list[dict] = []
    real = cell_module.train_ham

    def spy(theta, train_sets, val_sets, train_cfg, ham_cfg, seed, **kw):
        trained.append(ham_cfg.model_dump())
        return real(theta, train_sets, val_sets, train_cfg, ham_cfg, seed, **kw)

    monkeypatch.setattr(cell_module, "train_ham", spy)
    variants = [HamVariant(label="ties", set={"merge_method": "ties", "merge_hparams": {"keep": 0.2}}),
                HamVariant(label="best", set={"historical": "none"}),
                HamVariant(label="no-sae", set={"sae": False}),
                HamVariant(label="same", set={})]
    cfg = config(tiny_shapes, tmp_path / "run", methods=["ham", "ham_variants"], ham_variants=variants)
    rows = {r["method"]: r for r in experiment.run_experiment(cfg, log=lambda _: None)}
    assert list(rows) == ["ham", "ham:ties", "ham:best", "ham:no-sae", "ham:same"]
    # One HAM training serves ham, ties, best and same; only no-sae trains again.
    assert [t["sae"] for t in trained] == [True, False]
    assert [rows[m]["reused_training"] for m in ("ham:ties", "ham:best", "ham:no-sae", "ham:same")] == [
        True, True, False, True]
    assert rows["ham:same"]["test_acc"] == rows["ham"]["test_acc"]
    assert rows["ham:best"]["merged_from"] == "best" and rows["ham:ties"]["hparams"]["ham"]["merge_method"] == "ties"

    # A rerun with one more variant runs only that one; variants do not change the experiment key.
    trained.clear()
    cfg.ham_variants = [*variants, HamVariant(label="r0.5", set={"merge_hparams": {"trim": 0.5}})]
    again = experiment.run_experiment(cfg, log=lambda _: None)
    assert [r["method"] for r in again] == ["ham:r0.5"] and [t["sae"] for t in trained] == [True]
    with pytest.raises(ValueError, match="ham_variants\\[bad\\]"):
        ExperimentConfig(ham_variants=[HamVariant(label="bad", set={"opa_weight": -1})])


def test_ham_variant_runs_split_free_and_training_variants(tiny_shapes, tmp_path):
    from dgmerge.config import HamVariant

    variants = [HamVariant(label="best", set={"historical": "none"}), HamVariant(label="no-opa", set={"opa": False})]
    cfg = config(tiny_shapes, tmp_path / "run", methods=["ham_variants"], ham_variants=variants,
                 ham_variant_runs="reuse")
    assert [r["method"] for r in experiment.run_experiment(cfg, log=lambda _: None)] == ["ham:best"]
    cfg.ham_variant_runs = "train"
    assert [r["method"] for r in experiment.run_experiment(cfg, log=lambda _: None)] == ["ham:no-opa"]
    # A variant restricted to other seeds does not run (and does not keep the cell pending).
    cfg.ham_variants = [*variants, HamVariant(label="lam1", set={"opa_weight": 1.0}, seeds=[1])]
    assert experiment.run_experiment(cfg, log=lambda _: None) == []
