"""Multi-task cells in the shared loop: tasks with their own label spaces, scored by the gating method."""

from __future__ import annotations

from pathlib import Path

import pytest

from dgmerge.config import ExperimentConfig
from dgmerge.config.gating import GatingConfig
from dgmerge.config.tasks import TasksConfig
from dgmerge.evaluation.results import read_results
from dgmerge.pipeline.experiment import run_experiment
from dgmerge.reports.gating_multitask_table import render_gating_multitask

from tiny import tiny_experiment


def config(root: Path, out: Path, methods: list[str], combos: list[list[str]]) -> ExperimentConfig:
    return tiny_experiment(root, out, methods=methods, test_domains=None, backbone={"image_size": 32},
                           train={"steps": 2, "lr": 1e-2, "trainable": "last:2", "feature_cache": "memory"},
                           tasks=TasksConfig(combos=combos, max_test=5),
                           gating=GatingConfig(ms=[1], gate_steps=2, gate_batch=4, gram_batches=1))


def test_task_cells_have_their_own_label_spaces_and_heads(tiny_shapes, tmp_path):
    pytest.importorskip("sklearn")
    cfg = config(tiny_shapes, tmp_path / "run", ["single_source", "gating"], [["solid", "digits"],
                                                                            ["outline", "solid", "digits"]])
    rows = run_experiment(cfg, log=lambda _: None)
    assert {r["test_domain"] for r in rows} == {"solid+digits", "outline+solid+digits"}
    # Each expert is scored on its own task's out-split (at most max_test images).
    experts = [r for r in rows if r["method"].startswith("source:") and r["test_domain"] == "solid+digits"]
    assert [(r["method"], r["task"]) for r in experts] == [("source:solid", "solid"), ("source:digits", "digits")]
    assert experts[0]["split"]["n_test"] == {"solid": 5, "digits": 5}
    # Every gating row is per task and per head; an automatic head pays for the gate even at m = None.
    gated = [r for r in rows if r["method"] == "gating:average:m1" and r["test_domain"] == "solid+digits"]
    assert sorted((r["head"], r["task"]) for r in gated) == [
        ("auto", "digits"), ("auto", "solid"), ("manual", "digits"), ("manual", "solid")]
    plain = {r["head"]: r for r in rows if r["method"] == "gating:average" and r["task"] == "digits"
             and r["test_domain"] == "solid+digits"}
    assert plain["auto"]["params"] > plain["manual"]["params"]
    assert all(0.0 <= r["routed"] <= 1.0 for r in gated)
    # The expert alone on its task equals the single_source row of the same model.
    alone = next(r for r in rows if r["method"] == "gating:individual" and r["task"] == "digits"
                 and r["test_domain"] == "solid+digits")
    assert alone["test_acc"] == pytest.approx(experts[1]["test_acc"])
    table = render_gating_multitask(read_results(tmp_path / "run" / "results.jsonl"))
    assert "**3 tasks: outline, solid, digits**" in table and "| Ours + AvgMean, m = 1 | auto |" in table
    assert run_experiment(cfg, log=lambda _: None) == []


def test_methods_that_need_one_label_space_are_refused_on_tasks(tiny_shapes, tmp_path):
    cfg = config(tiny_shapes, tmp_path / "run", ["erm", "gating"], [["solid", "outline"]])
    with pytest.raises(ValueError, match=r"\['erm'\] need one label space"):
        run_experiment(cfg, log=lambda _: None)
    cfg = config(tiny_shapes, tmp_path / "run", ["gating"], [["solid", "sketchy"]])
    with pytest.raises(ValueError, match="sketchy"):
        run_experiment(cfg, log=lambda _: None)


def test_theta0_of_a_task_cell_is_described_by_its_first_tasks_label_space(tiny_shapes, tmp_path):
    pytest.importorskip("sklearn")
    from dgmerge.data.digits import DIGIT_CLASSES
    from dgmerge.data.imagefolder import scan_domains
    from dgmerge.methods.build_tasks import build_task_cell

    cfg = config(tiny_shapes, tmp_path / "run", ["gating"], [["digits", "solid"]])
    cell = build_task_cell(cfg, scan_domains(tiny_shapes / "Shapes"), ["digits", "solid"], 0, "key")
    # θ0 carries the first task's head, so its saved metadata must name that task's classes.
    assert cell.theta0.head.linear.out_features == 10
    assert cell.classes() == DIGIT_CLASSES == cell.model_meta("linear_probe")["classes"]
    assert cell.classes("solid") == list(scan_domains(tiny_shapes / "Shapes").classes)
