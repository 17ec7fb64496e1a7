"""The cell's small decisions, called on stand-ins: which averages ride on ERM, where they live,
how long the shared ERM run took, and which row θ0 gets. (End-to-end runs pass whatever these
return, so a wrong answer here shows only in cost or in a row's name.)"""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from dgmerge.config import (BackboneConfig, DataConfig, ExperimentConfig, HamConfig, MAConfig, SwadConfig,
                            TrainConfig)
from dgmerge.methods import cell as cell_module
from dgmerge.methods.cell import Cell
from dgmerge.models.heads import ZeroShotHead


def cfg(methods: list[str], history_device: str = "same") -> ExperimentConfig:
    return ExperimentConfig(output_dir="unused", seeds=[0], methods=methods,
                            data=DataConfig(root="unused", dataset="X"),
                            backbone=BackboneConfig(kind="tiny_cnn", name="micro"),
                            train=TrainConfig(history_device=history_device, eval_every=7),
                            ma=MAConfig(start_step=5), swad=SwadConfig(eval_every=3))


def observers(methods: list[str], done: set[str] = frozenset(), history_device: str = "same") -> dict:
    stand_in = SimpleNamespace(cfg=cfg(methods, history_device), done=set(done))
    return {o.name: o for o in Cell.erm_observers(stand_in)}


def test_only_the_averages_the_config_lists_and_has_not_finished_ride_on_erm():
    assert observers(["erm"]) == {}
    assert set(observers(["erm", "erm_ma"])) == {"ma"}
    assert set(observers(["erm", "swad"])) == {"swad"}
    assert set(observers(["erm_ma", "swad"])) == {"ma", "swad"}
    # A finished method's average is not rebuilt (its row is on disk; SWAD would cost evaluations).
    assert set(observers(["erm_ma", "swad"], done={"swad"})) == {"ma"}
    assert observers(["erm_ma", "swad"], done={"erm_ma", "swad"}) == {}
    assert observers(["ham"], done={"erm"}) == {}
    # The configured settings reach the observers.
    both = observers(["erm_ma", "swad"])
    assert both["ma"].start_step == 5 and both["swad"].every == 3


def test_history_device_cpu_keeps_the_averages_on_the_cpu_and_same_keeps_them_with_the_model():
    on_cpu = observers(["erm_ma", "swad"], history_device="cpu")
    assert on_cpu["ma"]._average.device == torch.device("cpu")
    assert on_cpu["swad"].valley.device == torch.device("cpu")
    with_model = observers(["erm_ma", "swad"])
    assert with_model["ma"]._average.device is None and with_model["swad"].valley.device is None


def test_the_shared_erm_run_records_its_own_wall_time_and_trains_once():
    calls = []

    def fine_tune(train_sets, desc, observers=()):
        calls.append(desc)
        time.sleep(0.05)
        return "model", "result"

    stand_in = SimpleNamespace(_erm=None, train_sets={"a": []}, fine_tune=fine_tune, erm_observers=lambda: [])
    before = time.perf_counter()
    run = Cell.erm_run(stand_in)
    elapsed = time.perf_counter() - before
    assert 0.05 <= run.wall_time_s <= elapsed
    assert (run.model, run.result, run.observers) == ("model", "result", {})
    assert Cell.erm_run(stand_in) is run and calls == ["erm"]


@pytest.mark.parametrize("head, row", [(ZeroShotHead.__new__(ZeroShotHead), "zero_shot"),
                                       (nn.Linear(2, 2), "linear_probe")])
def test_theta0s_row_is_zero_shot_under_a_text_head_and_linear_probe_under_a_probe(head, row):
    assert Cell.head_row_name(SimpleNamespace(theta0=SimpleNamespace(head=head))) == row


def test_ham_trains_guarded_resumably_under_its_own_name(monkeypatch, tmp_path):
    """HAM's run gets its own checkpoint file (a kill resumes it), its progress name, TensorBoard
    folder and loader workers, and both data paths go through the leak guard first."""
    seen: dict = {}

    def fake_train_ham(theta, train_sets, val_sets, train_cfg, ham_cfg, seed, **kwargs):
        seen.update(kwargs, theta=theta, train=train_sets, val=val_sets, seed=seed, ham_cfg=ham_cfg,
                    train_cfg=train_cfg)
        return SimpleNamespace(history=[{"step": 1}])

    monkeypatch.setattr(cell_module, "train_ham", fake_train_ham)
    monkeypatch.setattr(cell_module, "save_history", lambda path, history: seen.update(history_path=path))
    monkeypatch.setattr(cell_module, "save_finished", lambda path, result, key: seen.update(kept=(path, key)))
    config = cfg(["ham"]).model_copy(update={"output_dir": tmp_path,
                                             "train": TrainConfig(checkpoint_every=7),
                                             "data": DataConfig(root="unused", dataset="X", num_workers=2)})
    guarded = []
    cell = SimpleNamespace(cfg=config, seed=3, test_domain="sketch", job="J", train_sets={"a": "train-a"},
                           val_sets={"a": "val-a"}, ham_runs=[], kept=[], logs_dir=tmp_path / "logs",
                           guard=lambda data, purpose: guarded.append((data, purpose)), trainable_copy=lambda: "θ0")
    for method in ("desc", "checkpointer", "tensorboard_dir", "reusable_ham", "_ham_key", "checkpoint_dir"):
        setattr(cell, method, getattr(Cell, method).__get__(cell))
    ham_cfg = HamConfig(opa_weight=0.5)
    result = Cell.train_ham(cell, ham_cfg, "ham:no sae")
    assert guarded == [({"a": "train-a"}, "HAM's training"), ({"a": "val-a"}, "HAM's model selection")]
    assert (seen["theta"], seen["train"], seen["val"], seen["seed"], seen["ham_cfg"]) == (
        "θ0", {"a": "train-a"}, {"a": "val-a"}, 3, ham_cfg)
    assert seen["checkpoint"].path == tmp_path / "checkpoints" / "J" / "seed3" / "sketch" / "ham:no sae.pt"
    assert seen["checkpoint"].every == 7
    assert seen["desc"] == "seed 3 / sketch / ham:no sae"
    assert seen["log_dir"] == tmp_path / "tensorboard" / "seed3" / "sketch" / "ham:no_sae"
    assert seen["num_workers"] == 2
    assert seen["history_path"] == tmp_path / "logs" / "ham:no sae.csv"
    assert cell.ham_runs == [(ham_cfg, result)]
    # Kept beside the checkpoints, under the settings it was trained with, until the cell is done.
    kept = tmp_path / "checkpoints" / "J" / "seed3" / "sketch" / "ham:no sae.ham-finished.pt"
    assert seen["kept"] == (kept, {"ham": ham_cfg.model_dump(mode="json"),
                                   "train": config.train.model_dump(mode="json"), "seed": 3})
    assert cell.kept == [kept]
    assert seen["train_cfg"] is config.train  # no budget of HAM's own: train.steps

    # ham.steps is HAM's own budget; every other fine-tuning setting stays the experiment's.
    Cell.train_ham(cell, HamConfig(steps=11), "ham")
    assert seen["train_cfg"].steps == 11 and config.train.steps != 11
    assert seen["train_cfg"].model_dump(exclude={"steps"}) == config.train.model_dump(exclude={"steps"})
    # So is ham.eval_every its own evaluation cadence.
    Cell.train_ham(cell, HamConfig(steps=11, eval_every=5), "ham")
    assert (seen["train_cfg"].steps, seen["train_cfg"].eval_every, config.train.eval_every) == (11, 5, 50)


def stand_in_cell(tmp_path, **extra) -> SimpleNamespace:
    """A cell with Cell's own path and naming helpers bound, and stand-ins for the rest."""
    config = cfg(["erm"]).model_copy(update={
        "output_dir": tmp_path, "train": TrainConfig(checkpoint_every=9),
        "data": DataConfig(root="unused", dataset="X", num_workers=3)})
    cell = SimpleNamespace(cfg=config, seed=4, test_domain="sketch", job="J", logs_dir=tmp_path / "logs", **extra)
    for method in ("desc", "checkpointer", "checkpoint_dir", "tensorboard_dir", "fine_tune", "classes"):
        setattr(cell, method, getattr(Cell, method).__get__(cell))
    return cell


class Model:
    def __init__(self, source):
        self.source, self.loaded = source, None

    def load_state_dict(self, state):
        self.loaded = state


def test_fine_tune_guards_both_data_paths_and_restores_the_best_state(monkeypatch, tmp_path):
    """Cell.fine_tune trains θ0 under the source's head on the given sets, selects on the cell's
    validation sets, resumes from a checkpoint named after the run, and returns the best state."""
    seen: dict = {}

    def fake_fine_tune(model, train_sets, val_sets, train_cfg, seed, **kwargs):
        seen.update(kwargs, model=model, train=train_sets, val=val_sets, cfg=train_cfg, seed=seed)
        return SimpleNamespace(best_state={"best": 1}, history=[{"step": 1}])

    monkeypatch.setattr(cell_module, "fine_tune", fake_fine_tune)
    monkeypatch.setattr(cell_module, "save_history", lambda path, history: seen.update(history=(path, history)))
    guarded = []
    cell = stand_in_cell(tmp_path, val_sets={"a": "val-a"}, trainable_copy=Model,
                         guard=lambda data, purpose: guarded.append((data, purpose)))
    model, result = cell.fine_tune({"a": "train-a"}, "source a", "a", observers=["obs"])
    assert guarded == [({"a": "train-a"}, "training"), ({"a": "val-a"}, "model selection")]
    assert seen["model"] is model  # the copy trained is the copy returned
    assert model.source == "a" and model.loaded == {"best": 1} and result.best_state == {"best": 1}
    assert (seen["train"], seen["val"], seen["cfg"], seen["seed"]) == ({"a": "train-a"}, {"a": "val-a"},
                                                                       cell.cfg.train, 4)
    assert seen["desc"] == "seed 4 / sketch / source a" and seen["observers"] == ["obs"]
    assert seen["checkpoint"].path == tmp_path / "checkpoints" / "J" / "seed4" / "sketch" / "source_a.pt"
    assert seen["checkpoint"].every == 9 and seen["num_workers"] == 3
    assert seen["log_dir"] == tmp_path / "tensorboard" / "seed4" / "sketch" / "source_a"
    assert seen["history"] == (tmp_path / "logs" / "source_a.csv", [{"step": 1}])
    # DiWA's runs replace the config's training settings and the cell's seed; θ0's own head by default.
    other = TrainConfig(steps=3)
    model, _ = cell.fine_tune({"a": "train-a"}, "diwa 1", train=other, seed=11)
    assert model.source is None and seen["cfg"] is other and seen["seed"] == 11


def test_each_source_model_trains_on_its_own_source_once(tmp_path):
    calls = []

    def fine_tune(train_sets, desc, source):
        calls.append((train_sets, desc, source))
        time.sleep(0.02)
        return f"model {source}", f"result {source}"

    stand_in = SimpleNamespace(_sources=None, sources=["a", "b"], train_sets={"a": "A", "b": "B"},
                               fine_tune=fine_tune)
    before = time.perf_counter()
    runs = Cell.source_runs(stand_in)
    elapsed = time.perf_counter() - before
    assert calls == [({"a": "A"}, "source a", "a"), ({"b": "B"}, "source b", "b")]
    assert [(r.source, r.model, r.result) for r in runs] == [("a", "model a", "result a"),
                                                              ("b", "model b", "result b")]
    assert all(0.02 <= r.wall_time_s <= elapsed for r in runs)
    assert Cell.source_runs(stand_in) is runs and len(calls) == 2


def test_classes_are_the_datasets_or_each_tasks_own():
    dg = SimpleNamespace(task_classes={}, index=SimpleNamespace(classes=["dog", "cat"]), sources=["a", "b"])
    assert Cell.classes(dg) == ["dog", "cat"] and Cell.classes(dg, "a") == ["dog", "cat"]
    tasks = SimpleNamespace(task_classes={"a": ("x", "y"), "b": ("z",)}, sources=["a", "b"])
    assert Cell.classes(tasks, "b") == ["z"] and Cell.classes(tasks, "a") == ["x", "y"]
    assert Cell.classes(tasks) == ["x", "y"]  # θ0's head is the first task's
    assert isinstance(Cell.classes(tasks, "b"), list)


def test_a_saved_models_metadata_is_enough_to_rebuild_it(tmp_path):
    heads = {"b": ZeroShotHead.__new__(ZeroShotHead)}
    cell = stand_in_cell(tmp_path, task_classes={}, index=SimpleNamespace(classes=["dog", "cat"]), sources=["a"],
                         theta0_for=lambda task: SimpleNamespace(head=heads.get(task, nn.Linear(2, 2))))
    # The backbone as JSON values (a checkpoint path as a string, the mean as a list), so the
    # metadata can be written into the model file's header.
    cell.cfg = cell.cfg.model_copy(update={"backbone": BackboneConfig(kind="tiny_cnn", name="micro",
                                                                      checkpoint="w/tiny.pt", mean=(0.5, 0.5, 0.5))})
    meta = Cell.model_meta(cell, "erm")
    assert meta["backbone"]["checkpoint"] == "w/tiny.pt" and meta["backbone"]["mean"] == [0.5, 0.5, 0.5]
    assert meta == {
        "method": "erm", "dataset": "X", "test_domain": "sketch", "seed": 4, "classes": ["dog", "cat"],
        "backbone": {**cell.cfg.backbone.model_dump(mode="json")}, "head": "Linear"}
    cell.task_classes = {"a": ("x",), "b": ("y", "z")}
    meta = Cell.model_meta(cell, "gating", task="b")
    assert meta["task"] == "b" and meta["classes"] == ["y", "z"] and meta["head"] == "ZeroShotHead"


def test_a_sources_model_is_theta0s_encoder_under_that_sources_head(monkeypatch, tmp_path):
    """Multi-task cells give each task its own head; DG cells (no heads) always use θ0 itself."""
    from dgmerge.models.classifier import Classifier

    theta0 = Classifier(nn.Linear(3, 4), nn.Linear(4, 2))
    theta0.cut = "blocks.5"
    heads = {"b": nn.Linear(4, 5)}
    cell = SimpleNamespace(theta0=theta0, heads=heads, backbone="BB",
                           cfg=cfg(["erm"]).model_copy(update={"train": TrainConfig(trainable="last:1",
                                                                                      train_head=True)}))
    cell.theta0_for = Cell.theta0_for.__get__(cell)
    assert cell.theta0_for(None) is theta0 and cell.theta0_for("a") is theta0
    model_b = cell.theta0_for("b")
    assert model_b.encoder is theta0.encoder and model_b.head is heads["b"] and model_b.cut == "blocks.5"
    chosen = []
    monkeypatch.setattr(cell_module, "set_trainable", lambda *args: chosen.append(args))
    copy = Cell.trainable_copy(cell, "b")
    assert copy.head is not heads["b"] and torch.equal(copy.head.weight, heads["b"].weight)  # a copy
    assert copy.head.out_features == 5 and copy.cut == "blocks.5"
    assert chosen == [(copy, "BB", "last:1", True)]
