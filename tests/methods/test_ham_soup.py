"""ham_soup: every tuning training's per-source models merged together, at no extra training."""

from __future__ import annotations

import pytest
import torch

from dgmerge.config import ExperimentConfig, HamConfig, HamVariant
from dgmerge.files import read_state_dict
from dgmerge.methods import ham_soup
from dgmerge.pipeline.experiment import check_methods, run_experiment

from tiny import record_ham_trainings, tiny_experiment

LAM = [HamVariant(label="lam0.5_r0.2", tuning=True, set={"opa_weight": 0.5}),
       HamVariant(label="lam0.5_r0.4", tuning=True, set={"opa_weight": 0.5, "merge_hparams": {"trim": 0.4}}),
       HamVariant(label="lam0.1_r0.4", tuning=True, set={"merge_hparams": {"trim": 0.4}}),
       HamVariant(label="no-sae", set={"sae": False})]


def test_one_training_per_distinct_tuning_point_named_as_ham_variants_names_it():
    cfg = ExperimentConfig(ham=HamConfig(opa_weight=0.1), ham_variants=LAM)
    assert [(name, c.opa_weight, c.sae) for name, c in ham_soup.trainings(cfg)] == [
        ("ham", 0.1, True), ("ham_lam0.5_r0.2", 0.5, True)]  # r points reuse; no-sae is no tuning point


def test_a_config_without_tuning_trainings_is_refused_and_other_seeds_are_skipped():
    with pytest.raises(ValueError, match="no tuning point"):
        check_methods(ExperimentConfig(methods=["ham_soup"], ham_variants=LAM[2:]))
    cfg = ExperimentConfig(ham_variants=LAM, ham_tuning_seeds=[0])
    assert not ham_soup._done(cfg, 0, set()) and ham_soup._done(cfg, 1, set()) and ham_soup._done(cfg, 0, {"ham_soup"})
    assert not ham_soup._done(cfg.model_copy(update={"ham_tuning_seeds": None}), 1, set())


def test_without_trimming_the_soup_is_the_mean_of_the_trainings_merges(tiny_shapes, tmp_path, monkeypatch):
    trained = record_ham_trainings(monkeypatch, lambda ham_cfg, seed: ham_cfg.opa_weight)
    # trim 0: RHM is the plain mean of the task vectors, so the soup of two trainings of 3 models
    # each is the mean of the two 3-model means.
    cfg = tiny_experiment(tiny_shapes, tmp_path / "run", methods=["ham", "ham_variants", "ham_soup"],
                          save_models=True, ham=HamConfig(merge_hparams={"trim": 0.0}),
                          ham_variants=[HamVariant(label="lam1", tuning=True, set={"opa_weight": 1.0})])
    rows = {r["method"]: r for r in run_experiment(cfg, log=lambda _: None)}
    assert trained == [0.1, 1.0]  # the soup trained nothing of its own
    soup = rows["ham_soup"]
    assert soup["soup_of"] == ["ham", "ham_lam1"] and soup["members"] == 2 * 2
    models = tmp_path / "run" / "models" / "seed0" / "outline"
    ham, lam1, merged = (read_state_dict(models / f"{m}.safetensors") for m in ("ham", "ham_lam1", "ham_soup"))
    moved = [k for k in ham if not torch.equal(ham[k], lam1[k])]
    assert moved
    for key in moved:
        torch.testing.assert_close(merged[key], (ham[key] + lam1[key]) / 2, rtol=1e-5, atol=1e-6)
