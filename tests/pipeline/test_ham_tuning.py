"""HAM's training tuning points chosen on some seeds and reused on the others (`ham_tuning_seeds`)."""

import json
from pathlib import Path

import pytest

from dgmerge.config import ExperimentConfig, HamVariant
from dgmerge.evaluation.results import read_results
from dgmerge.pipeline import experiment
from dgmerge.pipeline.ham_tuning import candidates, chosen_training, skipped_points, tuning_first

from tiny import record_ham_trainings, tiny_experiment

# λ 0.1 (HAM's own training) with r 0.2 and 0.5; λ 1 with r 0.2 and 0.5; one ablation.
VARIANTS = [HamVariant(label="lam0.1_r0.5", tuning=True, set={"merge_hparams": {"trim": 0.5}}),
            HamVariant(label="lam1_r0.2", tuning=True, set={"opa_weight": 1.0}),
            HamVariant(label="lam1_r0.5", tuning=True, set={"opa_weight": 1.0, "merge_hparams": {"trim": 0.5}}),
            HamVariant(label="no-sae", set={"sae": False})]
POINTS = ["ham", "ham:lam0.1_r0.5", "ham:lam1_r0.2", "ham:lam1_r0.5"]
BASE = {"methods": ["ham", "ham_variants"], "ham_variants": VARIANTS, "ham_tuning_seeds": [0],
        "ham": {"merge_method": "rhm", "merge_hparams": {"trim": 0.2}}}


def cfg_with(**kw) -> ExperimentConfig:
    return ExperimentConfig(**{**BASE, **kw})


def not_chosen(*args, **kw) -> set[str]:
    """The points a cell skips, without the winner that `skipped_points` also names."""
    return skipped_points(*args, **kw)[1]


def rows_for(seed: int, vals: dict[str, float], domain: str = "photo", key: str = "k") -> list[dict]:
    return [{"experiment_key": key, "test_domain": domain, "seed": seed, "method": m, "val_acc": v}
            for m, v in vals.items()]


def test_candidates_are_ham_and_its_tuning_points_not_the_ablations():
    assert list(candidates(cfg_with(), 0)) == POINTS
    assert list(candidates(cfg_with(methods=["ham"]), 0)) == ["ham"]
    # The bench's --ablations part (variants that train) runs no tuning point: nothing to choose or skip.
    ablations = cfg_with(methods=["ham_variants"], ham_variant_runs="train")
    assert candidates(ablations, 0) == {} and not_chosen(ablations, [], "k", 1, "photo") == set()


def test_the_winner_by_source_validation_names_the_training_the_other_seeds_run():
    cfg = cfg_with()
    vals = {"ham": 0.80, "ham:lam0.1_r0.5": 0.81, "ham:lam1_r0.2": 0.79, "ham:lam1_r0.5": 0.85}
    # A held-out accuracy, another domain's rows or another experiment's rows take no part.
    noise = rows_for(0, {"ham": 0.99}, domain="sketch") + rows_for(0, {"ham": 0.99}, key="other")
    rows = rows_for(0, vals) + noise
    name, ham = chosen_training(cfg, rows, "k", "photo")
    assert name == "ham:lam1_r0.5" and ham.opa_weight == 1.0
    # Seed 1 skips every point it cannot merge from λ 1's training: HAM's own and its r 0.5.
    assert not_chosen(cfg, rows, "k", 1, "photo") == {"ham", "ham:lam0.1_r0.5"}
    assert skipped_points(cfg, rows, "k", 1, "photo")[0] == "ham:lam1_r0.5"
    assert skipped_points(cfg, rows, "k", 0, "photo") == (None, set())
    # The tuning seed itself skips nothing, and without ham_tuning_seeds nothing is skipped.
    assert not_chosen(cfg, rows, "k", 0, "photo") == set()
    assert not_chosen(cfg_with(ham_tuning_seeds=None), rows, "k", 1, "photo") == set()

    # λ 0.1 winning keeps HAM's own training: the λ 1 points are skipped.
    vals["ham:lam1_r0.5"] = 0.80
    assert not_chosen(cfg, rows_for(0, vals), "k", 1, "photo") == {"ham:lam1_r0.2", "ham:lam1_r0.5"}


def test_several_tuning_seeds_choose_by_their_mean_and_ties_go_to_the_first_point():
    cfg = cfg_with(ham_tuning_seeds=[0, 1])
    rows = (rows_for(0, {"ham": 0.90, "ham:lam0.1_r0.5": 0.80, "ham:lam1_r0.2": 0.70, "ham:lam1_r0.5": 0.96})
            + rows_for(1, {"ham": 0.80, "ham:lam0.1_r0.5": 0.80, "ham:lam1_r0.2": 0.70, "ham:lam1_r0.5": 0.70}))
    # Means 0.85, 0.80, 0.70, 0.83: HAM's own point wins although λ 1 won seed 0.
    assert chosen_training(cfg, rows, "k", "photo")[0] == "ham"
    tied = rows_for(0, dict.fromkeys(POINTS, 0.5)) + rows_for(1, dict.fromkeys(POINTS, 0.5))
    assert chosen_training(cfg, tied, "k", "photo")[0] == "ham"
    tied_late = rows_for(0, {**dict.fromkeys(POINTS, 0.5), "ham": 0.4})
    assert chosen_training(cfg_with(), tied_late, "k", "photo")[0] == "ham:lam0.1_r0.5"


def test_missing_tuning_rows_are_an_error_naming_them_and_the_way_out():
    cfg = cfg_with()
    partial = rows_for(0, {"ham": 0.8, "ham:lam0.1_r0.5": 0.8})
    with pytest.raises(ValueError) as err:
        not_chosen(cfg, partial, "k", 2, "photo", results_path="runs/x/results.jsonl")
    message = str(err.value)
    assert "held-out domain photo" in message and "runs/x/results.jsonl" in message
    assert "missing seed 0: ham:lam1_r0.2, seed 0: ham:lam1_r0.5" in message
    assert "ham_tuning_seeds: null" in message


def test_tuning_seeds_run_first():
    assert tuning_first(cfg_with(ham_tuning_seeds=[2]), [0, 1, 2]) == [2, 0, 1]
    assert tuning_first(cfg_with(ham_tuning_seeds=None), [1, 0]) == [1, 0]
    with pytest.raises(ValueError, match="repeat"):
        cfg_with(ham_tuning_seeds=[0, 0])
    with pytest.raises(ValueError):
        cfg_with(ham_tuning_seeds=[])


def tiny(root: Path, out: Path, **kw) -> ExperimentConfig:
    return tiny_experiment(root, out, **{**BASE, **kw})


def test_later_seeds_train_only_the_point_seed_0_chose(tiny_shapes, tmp_path, monkeypatch):
    trained = record_ham_trainings(monkeypatch, lambda ham_cfg, seed: (seed, ham_cfg.opa_weight, ham_cfg.sae))
    out = tmp_path / "run"
    # Without seed 0's rows, seed 1 cannot know the choice: refused before anything trains.
    with pytest.raises(ValueError, match="missing seed 0: ham, "):
        experiment.run_experiment(tiny(tiny_shapes, out, seeds=[1]), log=lambda _: None)
    assert trained == []

    experiment.run_experiment(tiny(tiny_shapes, out, seeds=[0]), log=lambda _: None)
    assert sorted(trained) == [(0, 0.1, False), (0, 0.1, True), (0, 1.0, True)]
    # Make λ 1 with r 0.5 seed 0's clear winner on source validation, whatever the tiny run gave.
    path = out / "results.jsonl"
    rows = read_results(path)
    for row in rows:
        row["val_acc"] = 0.9 if row["method"] == "ham:lam1_r0.5" else 0.1
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))

    trained.clear()
    logged: list[str] = []
    cfg = tiny(tiny_shapes, out, seeds=[1, 0])  # seed 0 is done; the order given does not matter
    new = experiment.run_experiment(cfg, log=logged.append)
    # Seed 1 trains λ 1 (its two r points) and the ablation, never λ 0.1.
    assert sorted(trained) == [(1, 0.1, False), (1, 1.0, True)]
    assert sorted(r["method"] for r in new) == ["ham:lam1_r0.2", "ham:lam1_r0.5", "ham:no-sae"]
    assert all(r["seed"] == 1 for r in new)
    # Each row says how far its model moved and how its HAM training went (borrowed, conflicts).
    assert all(r["update_norm"] > 0 and r["borrowed_per_step"] >= 0 and 0 <= r["final_sign_conflict"] <= 1
               for r in new)
    assert any("chosen on seeds [0] for outline: ham:lam1_r0.5" in line for line in logged)
    # The skipped points keep nothing pending: a rerun trains nothing.
    trained.clear()
    assert experiment.run_experiment(cfg, log=lambda _: None) == [] and trained == []
    # Which seeds tune decides which rows exist, not their values: the key ignores it.
    assert experiment.experiment_key(cfg) == experiment.experiment_key(tiny(tiny_shapes, out, ham_tuning_seeds=None))


def test_the_ablations_reference_is_recorded_on_every_seed_from_the_training_they_share(tiny_shapes, tmp_path,
                                                                                         monkeypatch):
    # The bench's `reference` (HAM's own λ and r) beside a merge-time ablation: where seed 0 chose
    # λ 1, seed 1 trains λ 0.1 once for both, and its reference row is HAM's own merge of it.
    variants = [VARIANTS[1], HamVariant(label="reference"), HamVariant(label="best-checkpoint",
                                                                       set={"historical": "none"})]
    trained = record_ham_trainings(monkeypatch, lambda ham_cfg, seed: (seed, ham_cfg.opa_weight))
    out = tmp_path / "run"
    experiment.run_experiment(tiny(tiny_shapes, out, seeds=[0], ham_variants=variants), log=lambda _: None)
    assert sorted(trained) == [(0, 0.1), (0, 1.0)]
    path = out / "results.jsonl"
    rows = read_results(path)
    by = {r["method"]: r for r in rows}
    # Seed 0: the reference is HAM's own point, so it is the `ham` row's model again.
    assert by["ham:reference"]["test_acc"] == by["ham"]["test_acc"] and by["ham:reference"]["reused_training"]
    assert "tuning_of" not in by["ham:reference"]  # it never competes with the tuning points
    for row in rows:
        row["val_acc"] = 0.9 if row["method"] == "ham:lam1_r0.2" else 0.1
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))

    trained.clear()
    new = experiment.run_experiment(tiny(tiny_shapes, out, seeds=[1], ham_variants=variants), log=lambda _: None)
    assert sorted(trained) == [(1, 0.1), (1, 1.0)]
    assert sorted(r["method"] for r in new) == ["ham:best-checkpoint", "ham:lam1_r0.2", "ham:reference"]
    reference = next(r for r in new if r["method"] == "ham:reference")
    assert reference["hparams"]["ham"]["opa_weight"] == 0.1 and reference["merged_from"] == by["ham"]["merged_from"]
