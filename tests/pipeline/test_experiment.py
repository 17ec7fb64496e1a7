"""End to end on tiny generated data: every method runs, rows are complete, the target never leaks."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from dgmerge.config import ExperimentConfig, MergeSpec, ProbeConfig
from typer.testing import CliRunner

from dgmerge.cli.main import app
from dgmerge.evaluation.results import REQUIRED_FIELDS, read_results
from dgmerge.methods import cell as cell_module
from dgmerge.methods import build as cell_build
from dgmerge.config.loading import SHIPPED_CONFIGS
from dgmerge.pipeline import experiment
from dgmerge.pipeline.experiment import load_experiment, scope_overrides
from dgmerge.evaluation.saved_models import score_model
from dgmerge.models.tiny_cnn import build_tiny_cnn

from tiny import record_ham_trainings, tiny_experiment



config = tiny_experiment


def _image(path: Path) -> torch.Tensor:
    """A 64 px PNG as the tiny_cnn's eval transform gives it (RGB in [-1, 1], CHW), by hand."""
    with Image.open(path) as img:
        assert img.size == (64, 64)  # the transform's resize and centre crop are then the identity
        pixels = torch.tensor(np.asarray(img.convert("RGB")), dtype=torch.float32) / 255
    return ((pixels - 0.5) / 0.5).permute(2, 0, 1)


def test_all_methods_rows_models_and_resume(tiny_shapes, tmp_path, monkeypatch, tiny_cnn_by_hand):
    """Every method's row, the files it saved and a resume, checked against references that share
    no code with the run: each saved model is re-scored on the held-out domain by a hand-written
    forward pass over the PNGs (no dgmerge model, dataset or accuracy code), the saved average
    merge is recomputed by hand from the saved source models, and an interrupted results file
    resumes to the same rows.

    The random tiny_cnn learns next to nothing in 3 steps (every row sits near chance, 1/5), so
    accuracy bars against the probe would test luck, not code; instead the probe is fitted hard
    enough that its predictions are not one constant class, which lets a wrong model, a wrong test
    set or a wrong label order show up as a different count of correct images."""
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
    # A probe fitted long and fast enough to tell some shapes apart on the random features.
    cfg.probe = ProbeConfig(epochs=50, lr=0.5, batch_size=32)
    cfg.merges = [MergeSpec(method="average"), MergeSpec(method="rhm", hparams={"trim": 0.2}),
                  MergeSpec(method="ties", hparams={"keep": 0.5}, label="ties-k0.5")]
    rows = experiment.run_experiment(cfg, log=lambda _: None)

    methods = [r["method"] for r in rows]
    assert methods == ["linear_probe", "erm", "source:noisy", "source:solid", "single_source_mean",
                       "merge:average", "merge:rhm", "merge:ties-k0.5"]
    by = {r["method"]: r for r in rows}
    assert by["merge:rhm"]["merge_hparams"] == {"trim": 0.2}
    # The target domain fed nothing to training, the probe head or model selection.
    assert seen_paths and not [p for p in seen_paths if "/outline/" in p]
    outline = sorted((tiny_shapes / "Shapes" / "outline").glob("*/*.png"))
    classes = sorted({p.parent.name for p in outline})
    assert len(outline) == 30 and len(classes) == 5
    for row in rows:
        assert all(field in row for field in REQUIRED_FIELDS)
        assert row["test_domain"] == "outline" and "outline" not in row["split"]["sources"]
        assert row["split"]["n_test"] == len(outline)  # the whole held-out domain is the test set
    stored = read_results(tmp_path / "run" / "results.jsonl")
    assert [r["method"] for r in stored] == methods
    assert (tmp_path / "run" / "logs" / "seed0" / "outline" / "erm.csv").is_file()

    # Each saved model, read back as raw tensors and run by hand on every outline PNG, gets
    # exactly the row's accuracy: the row scored this model, on the held-out domain, with the
    # folders' class order. The mean row is the mean of the single-source rows.
    cell_dir = tmp_path / "run" / "models" / "seed0" / "outline"
    images = torch.stack([_image(p) for p in outline])
    labels = torch.tensor([classes.index(p.parent.name) for p in outline])
    files = {m: load_file(cell_dir / f"{m.replace(':', '_')}.safetensors") for m in methods
             if m != "single_source_mean"}
    predictions = {}
    for method, state in files.items():
        with torch.no_grad():
            predictions[method] = tiny_cnn_by_hand(state, images, "head.linear").argmax(dim=1)
        correct = int((predictions[method] == labels).sum())
        assert by[method]["test_acc"] == pytest.approx(correct / len(outline), abs=1e-6), method
    sources = [by["source:noisy"]["test_acc"], by["source:solid"]["test_acc"]]
    assert by["single_source_mean"]["test_acc"] == pytest.approx(sum(sources) / 2, abs=1e-6)
    # Not vacuous: the probe beats chance and its predictions are not one class (with one class
    # predicted everywhere, any model on any balanced domain would score 1/5).
    assert by["linear_probe"]["test_acc"] > 1 / 5 + 0.05
    assert len(set(predictions["linear_probe"].tolist())) > 1

    # The saved models are what their names say: the probe row is θ0 (the seeded random
    # tiny_cnn under the fitted head); fine-tuning moved the encoder and kept θ0's frozen head;
    # the average merge is the mean of the two saved source models, computed here by hand.
    theta0 = files["linear_probe"]
    fresh = build_tiny_cnn("tiny").state_dict()
    assert all(torch.equal(theta0[f"encoder.{k}"], v) for k, v in fresh.items())
    weights = [k for k in theta0 if k.startswith("encoder.") and k.endswith((".0.weight", ".1.weight", ".1.bias"))]
    for method in ("erm", "source:noisy", "source:solid"):
        assert max(float((files[method][k] - theta0[k]).abs().max()) for k in weights) > 1e-4, method
        assert all(torch.equal(files[method][k], theta0[k]) for k in ("head.linear.weight", "head.linear.bias"))
    noisy, solid = files["source:noisy"], files["source:solid"]
    for key in weights:
        torch.testing.assert_close(files["merge:average"][key], (noisy[key] + solid[key]) / 2, rtol=0, atol=1e-7)
    assert not torch.equal(files["merge:average"][weights[0]], noisy[weights[0]])

    # The saved files merge on the command line like any checkpoints into the run's own average.
    result = CliRunner().invoke(app, ["merge", "--method", "average", "--pretrained", str(cell_dir / "linear_probe.safetensors"),
                                      "--out", str(tmp_path / "merged.safetensors"), "--models",
                                      str(cell_dir / "source_noisy.safetensors"), str(cell_dir / "source_solid.safetensors")])
    assert result.exit_code == 0, result.output
    cli_merged = load_file(tmp_path / "merged.safetensors")
    for key in weights:
        torch.testing.assert_close(cli_merged[key], files["merge:average"][key], rtol=0, atol=1e-7)
    # ... and `dgmerge evaluate`'s loader scores a saved file as the run did.
    scores = score_model(cell_dir / "erm.safetensors", tiny_shapes / "Shapes", ["outline"])
    assert scores["outline"] == (len(outline), pytest.approx(by["erm"]["test_acc"], abs=1e-6))

    # Rerunning the same config resumes: nothing is trained again, nothing appended.
    assert experiment.run_experiment(cfg, log=lambda _: None) == []
    assert len(read_results(tmp_path / "run" / "results.jsonl")) == len(rows)
    # A run killed after its first two rows resumes with the rest, and they are the same rows
    # (same models from the same seeds, same scores) as the uninterrupted run's.
    results = tmp_path / "run" / "results.jsonl"
    results.write_text("".join(results.read_text().splitlines(keepends=True)[:2]))
    resumed = experiment.run_experiment(cfg, log=lambda _: None)
    assert [r["method"] for r in resumed] == methods[2:]
    for row in resumed:
        assert (row["test_acc"], row["val_acc"]) == pytest.approx((by[row["method"]]["test_acc"],
                                                                  by[row["method"]]["val_acc"]), nan_ok=True)
    assert [r["method"] for r in read_results(results)] == methods


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

    trained = record_ham_trainings(monkeypatch, lambda ham_cfg, seed: ham_cfg.model_dump())
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


def test_a_run_stopped_after_hams_training_resumes_its_variants_without_training_it_again(
        tiny_shapes, tmp_path, monkeypatch):
    """HAM's training is kept on disk until the cell is done: a stop during a later training
    (here no-sae's) loses neither it nor the rows of the variants that merge it."""
    from dgmerge.config import HamVariant
    from dgmerge.training.checkpoint import Checkpointer

    class Killed(Exception):
        pass

    variants = [HamVariant(label="ties", set={"merge_method": "ties", "merge_hparams": {"keep": 0.2}}),
                HamVariant(label="no-sae", set={"sae": False}),
                HamVariant(label="r0.5", set={"merge_hparams": {"trim": 0.5}})]

    def cfg(out):
        return config(tiny_shapes, out, methods=["ham", "ham_variants"], ham_variants=variants,
                      train={"steps": 4, "checkpoint_every": 2})

    full = {r["method"]: r for r in experiment.run_experiment(cfg(tmp_path / "a"), log=lambda _: None)}
    assert not list((tmp_path / "a" / "checkpoints").rglob("*.pt"))  # released with the cell

    original = Checkpointer.save

    def die_in_no_sae(self, payload):
        original(self, payload)
        if self.path.name == "ham_no-sae.pt":
            raise Killed

    monkeypatch.setattr(Checkpointer, "save", die_in_no_sae)
    with pytest.raises(Killed):
        experiment.run_experiment(cfg(tmp_path / "b"), log=lambda _: None)
    (kept,) = (tmp_path / "b" / "checkpoints").rglob("*.ham-finished.pt")
    assert kept.name == "ham.ham-finished.pt"
    monkeypatch.undo()

    trained = record_ham_trainings(monkeypatch, lambda ham_cfg, seed: ham_cfg.sae)
    rows = {r["method"]: r for r in experiment.run_experiment(cfg(tmp_path / "b"), log=lambda _: None)}
    assert list(rows) == ["ham:no-sae", "ham:r0.5"] and trained == [False]  # HAM itself did not train again
    assert rows["ham:r0.5"]["reused_training"] is True
    for method, row in rows.items():
        assert (row["test_acc"], row["val_acc"]) == (full[method]["test_acc"], full[method]["val_acc"])
    # The training's own wall time came back with it (the one the first process's ham row wrote).
    first = {r["method"]: r for r in read_results(tmp_path / "b" / "results.jsonl")}
    assert rows["ham:r0.5"]["train_wall_time_s"] == first["ham"]["train_wall_time_s"]
    assert not list((tmp_path / "b" / "checkpoints").rglob("*.pt"))


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


def test_scope_overrides_carry_only_the_options_given():
    assert scope_overrides() == {}
    assert scope_overrides(seeds=[2, 0], test_domains=["sketch"], steps=300) == {
        "seeds": [2, 0], "data.test_domains": ["sketch"], "train.steps": 300, "ham.steps": None,
        "ham.eval_every": None}
    assert scope_overrides(steps=50) == {"train.steps": 50, "ham.steps": None, "ham.eval_every": None}


def test_load_experiment_checks_methods_against_the_experiment_registry(tmp_path):
    cfg = load_experiment("bench_pacs_cpu", {"seeds": [1]})
    assert cfg.seeds == [1] and "ham" in cfg.methods
    bad = tmp_path / "bad.yaml"
    bad.write_text((SHIPPED_CONFIGS / "bench_pacs_cpu.yaml").read_text().replace(
        "methods: [linear_probe, erm,", "methods: [linear_probe, ermm,"))
    with pytest.raises(ValueError, match="ermm"):
        load_experiment(bad)
