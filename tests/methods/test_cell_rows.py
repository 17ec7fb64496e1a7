"""A cell's rows, on stand-ins: which accuracy each field holds, which ids every row carries (the
protocol's record of dataset, domain, seed, method, settings and split), where the row and the
model file go. End-to-end runs check the numbers; these check each field's source."""

from __future__ import annotations

import json
import math
import statistics
import time
from types import SimpleNamespace

import pytest
import torch

from dgmerge.config import BackboneConfig, DataConfig, ExperimentConfig, TrainConfig
from dgmerge.methods import cell as cell_module
from dgmerge.methods.cell import Cell
from dgmerge.training.finetune import SELECTION_RULE


class Data(list):
    def __init__(self, name: str, n: int, skipped=()):
        super().__init__(range(n))
        self.name, self.skipped = name, list(skipped)


ACCURACY = {"val-a": 0.5, "val-b": 0.8, "test": 0.25, "test-t2": 0.75}


def stand_in(tmp_path, *, save_models=True, results=True, val=True, tasks=False) -> SimpleNamespace:
    cfg = ExperimentConfig(output_dir=tmp_path, seeds=[2], save_models=save_models,
                           data=DataConfig(root="unused", dataset="X", holdout_fraction=0.3,
                                           max_images_per_domain=40),
                           backbone=BackboneConfig(kind="tiny_cnn", name="micro", checkpoint="w/t.pt",
                                                   mean=(0.5, 0.5, 0.5)),
                           train=TrainConfig(eval_batch_size=17, precision="bf16", feature_cache_dir="cache"),
                           **({"tasks": {"combos": [["a", "t2"]], "max_test": 9}} if tasks else {}))
    lines: list[str] = []
    cell = SimpleNamespace(
        cfg=cfg, seed=2, test_domain="sketch", job="K", log=lines.append, lines=lines, rows=[],
        results_path=tmp_path / "results.jsonl" if results else None,
        train_sets={"a": Data("train-a", 5, skipped=["x.png"]), "b": Data("train-b", 5)},
        val_sets={"a": Data("val-a", 3, skipped=["x.png", "y.png"]), "b": Data("val-b", 3)} if val else {},
        test_set=Data("test", 11), test_sets={"t2": Data("test-t2", 6)} if tasks else {},
        task_classes={}, index=SimpleNamespace(classes=["dog", "cat"]),
        theta0_for=lambda task: SimpleNamespace(head=object()), update_norm=lambda model: 1.5)
    cell.sources = list(cell.train_sets)
    cell.out_dir = tmp_path / "models"
    for method in ("record", "append", "row_ids", "skipped_images", "model_meta", "classes"):
        setattr(cell, method, getattr(Cell, method).__get__(cell))
    return cell


@pytest.fixture
def scored(monkeypatch):
    calls: list[tuple] = []
    saved: list[tuple] = []

    def accuracy(model, data, batch, desc, precision):
        calls.append((model, data.name, batch, desc, precision))
        return ACCURACY[data.name]

    monkeypatch.setattr(cell_module, "accuracy", accuracy)
    monkeypatch.setattr(cell_module, "save_model", lambda path, model, meta: saved.append((path, model, meta)))
    return SimpleNamespace(calls=calls, saved=saved)


def test_a_row_scores_source_validation_and_the_test_domain_and_carries_the_protocols_ids(tmp_path, scored):
    cell = stand_in(tmp_path)
    start = time.perf_counter()
    time.sleep(0.01)
    row = cell.record("merge:ties", "M", start, {"extra": 1}, group="merge", hparams={"k": 0.2})
    elapsed = time.perf_counter() - start
    assert scored.calls == [("M", "val-a", 17, "val a", "bf16"), ("M", "val-b", 17, "val b", "bf16"),
                            ("M", "test", 17, "test sketch", "bf16")]
    assert row["val_acc"] == statistics.fmean([0.5, 0.8]) and row["test_acc"] == 0.25
    assert 0.01 <= row["wall_time_s"] <= round(elapsed, 3) + 1e-3
    assert (row["method"], row["method_group"], row["experiment_key"], row["extra"]) == ("merge:ties", "merge", "K", 1)
    assert (row["dataset"], row["test_domain"], row["seed"], row["selection"]) == ("X", "sketch", 2, SELECTION_RULE)
    assert row["skipped_images"] == 2  # x.png counted once, y.png
    assert row["update_norm"] == 1.5
    assert row["hparams"] == {"train": cell.cfg.train.model_dump(mode="json"),
                              "probe": cell.cfg.probe.model_dump(mode="json"), "k": 0.2,
                              "backbone": cell.cfg.backbone.model_dump(mode="json"), "train_augment": False}
    assert row["hparams"]["train"]["precision"] == "bf16"
    assert row["split"] == {"holdout_fraction": 0.3, "trial_seed": 2, "split_seed": "seed_hash(trial_seed, domain)",
                            "test_split": "full", "max_images_per_domain": 40, "sources": ["a", "b"], "n_test": 11}
    # The row is on disk and in the cell, and the log line names both accuracies. It holds JSON
    # values only (paths as strings, tuples as lists), so the row a caller gets is the row read back.
    assert [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()] == [row]
    assert row["hparams"]["train"]["feature_cache_dir"] == "cache" and row["hparams"]["backbone"]["mean"] == [0.5] * 3
    assert cell.rows == [row]
    assert cell.lines == [f"   {'merge:ties':<28} test acc  25.0   source val  65.0"]
    # The model file: a portable name, and the metadata `dgmerge evaluate` rebuilds it from.
    ((path, model, meta),) = scored.saved
    assert path == tmp_path / "models" / "merge_ties.safetensors" and model == "M"
    assert meta == cell.model_meta("merge:ties")


def test_a_trained_rows_source_validation_is_its_selected_checkpoints(tmp_path, scored):
    cell = stand_in(tmp_path, save_models=False, results=False)
    result = SimpleNamespace(history=[{"step": 5, "val_acc": 0.1}], best_val_acc=0.9)
    row = cell.record("erm", "M", time.perf_counter(), {}, result=result)
    assert row["val_acc"] == 0.9 and row["method_group"] == "erm"
    assert [c[1] for c in scored.calls] == ["test"]  # validation is not scored again
    assert scored.saved == [] and not (tmp_path / "results.jsonl").exists() and cell.rows == [row]
    # A run that never validated (no val_acc in its history) is scored on the validation sets.
    row = cell.record("erm", "M", time.perf_counter(), {}, result=SimpleNamespace(history=[{"step": 5}]))
    assert row["val_acc"] == statistics.fmean([0.5, 0.8])
    row = cell.record("erm", "M", time.perf_counter(), {}, result=SimpleNamespace(history=[]))
    assert row["val_acc"] == statistics.fmean([0.5, 0.8])


def test_without_validation_sets_the_rows_source_validation_is_nan(tmp_path, scored):
    row = stand_in(tmp_path, val=False).record("erm", "M", time.perf_counter(), {})
    assert math.isnan(row["val_acc"]) and [c[1] for c in scored.calls] == ["test"]


def test_a_task_row_is_scored_on_that_tasks_test_set(tmp_path, scored):
    cell = stand_in(tmp_path, tasks=True)
    row = cell.record("gating", "M", time.perf_counter(), {"m": 3}, task="t2")
    assert scored.calls[-1] == ("M", "test-t2", 17, "test t2", "bf16")
    assert row["test_acc"] == 0.75 and row["task"] == "t2" and row["m"] == 3
    assert row["split"]["test_split"] == "out" and row["split"]["max_test"] == 9
    assert row["split"]["n_test"] == {"t2": 6}
    assert scored.saved[0][2]["task"] == "t2"


def test_the_update_norm_is_the_distance_from_theta0_over_the_trained_tensors_only():
    from torch import nn

    theta0 = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1))
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1))
    model.load_state_dict(theta0.state_dict())
    with torch.no_grad():
        model[1].weight += torch.tensor([[3.0, 0.0]])
        model[1].bias += 4.0
        model[0].weight += 100.0  # not a trained tensor: outside the norm
    cell = SimpleNamespace(theta0=theta0, trained_keys=lambda: ["1.weight", "1.bias"])
    assert Cell.update_norm(cell, model) == pytest.approx(5.0)  # sqrt(3² + 4²), by hand
    assert Cell.update_norm(cell, theta0) == 0.0
    # A model without θ0's trained tensors (a gate, another head's shape) has no norm.
    assert Cell.update_norm(cell, nn.Linear(2, 1)) is None
    other = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 3))
    assert Cell.update_norm(cell, other) is None


def test_a_ham_rows_training_summary_by_hand():
    from dgmerge.methods.ham import training_summary

    history = [{"step": 1, "borrowed": 10, "sign_conflict": 0.3}, {"step": 2, "borrowed": 20, "sign_conflict": 0.2},
               {"step": 3, "borrowed": 45, "sign_conflict": 0.123456}]
    assert training_summary(history) == {"borrowed_per_step": 25.0, "final_sign_conflict": 0.1235}
    assert training_summary([]) == {}
