"""ERM + MA, SWAD and DiWA as experiment methods: one shared ERM run, erm's row unchanged, resumable."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dgmerge.config import (BackboneConfig, DataConfig, DiwaConfig, ExperimentConfig, MAConfig, ProbeConfig,
                            SwadConfig, TrainConfig)
from dgmerge.files import read_state_dict
from dgmerge.methods import cell as cell_module
from dgmerge.methods import diwa as diwa_module
from dgmerge.pipeline.experiment import run_experiment
from dgmerge.training.checkpoint import Checkpointer

CHANCE = 1 / 3
ALL = ["erm", "erm_ma", "swad", "diwa"]


@pytest.fixture(scope="module")
def colors(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three domains (bright, dark, noisy) of three classes told apart by a coloured patch:
    learnable in a dozen steps of the tiny CNN, so rows can be held above chance."""
    root = tmp_path_factory.mktemp("colors")
    rng = np.random.default_rng(0)
    for domain, (level, noise) in {"bright": (0.9, 0.05), "dark": (0.45, 0.05), "noisy": (0.7, 0.25)}.items():
        for name, rgb in {"red": (1, 0, 0), "green": (0, 1, 0), "blue": (0, 0, 1)}.items():
            folder = root / "Colors" / domain / name
            folder.mkdir(parents=True)
            for i in range(12):
                image = np.full((16, 16, 3), 0.2) + rng.normal(0.0, noise, (16, 16, 3))
                y, x = rng.integers(0, 8, 2)
                image[y:y + 8, x:x + 8] = np.array(rgb) * level + 0.1
                Image.fromarray((np.clip(image, 0, 1) * 255).astype(np.uint8)).save(folder / f"{i:03d}.png")
    return root


def config(root: Path, out: Path, methods: list[str], **kw) -> ExperimentConfig:
    checkpoint_every = kw.pop("checkpoint_every", 0)
    settings = dict(ma=MAConfig(start_step=4), swad=SwadConfig(eval_every=2), diwa=DiwaConfig(runs=2))
    return ExperimentConfig(
        output_dir=out, seeds=[0], methods=methods, save_models=True,
        data=DataConfig(root=root, dataset="Colors", test_domains=["dark"], cache_images=True),
        backbone=BackboneConfig(kind="tiny_cnn", name="micro", image_size=16),
        probe=ProbeConfig(epochs=5, batch_size=32),
        train=TrainConfig(steps=12, batch_size=8, lr=1e-2, eval_every=4, eval_batch_size=64,
                          checkpoint_every=checkpoint_every),
        **{**settings, **kw})


class Killed(Exception):
    pass


def kill_in(monkeypatch: pytest.MonkeyPatch, run_name: str, step: int) -> None:
    """Make the cell's checkpointer of `run_name` die right after its save at `step`."""

    class KillAfterSave(Checkpointer):
        def save(self, payload):
            super().save(payload)
            if payload["step"] == step:
                raise Killed

    def checkpointer(path, every):
        return (KillAfterSave if Path(path).name == f"{run_name}.pt" else Checkpointer)(path, every)

    monkeypatch.setattr(cell_module, "Checkpointer", checkpointer)


def spy_trainings(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record the name of every fine-tuning run the cells start."""
    calls: list[str] = []
    real = cell_module.fine_tune

    def spy(model, train_sets, val_sets, cfg, seed, **kwargs):
        calls.append(kwargs["desc"].rsplit(" / ", 1)[-1])
        return real(model, train_sets, val_sets, cfg, seed, **kwargs)

    monkeypatch.setattr(cell_module, "fine_tune", spy)
    return calls


def model_file(out: Path, method: str) -> dict[str, torch.Tensor]:
    return read_state_dict(out / "models" / "seed0" / "dark" / f"{method.replace(':', '_')}.safetensors")


def same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    # On the CPU: runs train on CUDA where there is one, files and finished runs load on the CPU.
    return a.keys() == b.keys() and all(torch.equal(a[k].cpu(), b[k].cpu()) for k in a)


@pytest.fixture(scope="module")
def every_method(colors: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict]]:
    """One uninterrupted run of erm, erm_ma, swad and diwa (output folder, rows)."""
    out = tmp_path_factory.mktemp("every") / "run"
    return out, run_experiment(config(colors, out, ALL), log=lambda _: None)


def test_the_methods_share_one_erm_run_and_leave_erms_row_as_it_was(colors, tmp_path, monkeypatch, every_method):
    out, rows = every_method
    assert [r["method"] for r in rows] == ["erm", "erm_ma", "swad", "diwa", "diwa:greedy"]
    assert all(r["test_acc"] > CHANCE for r in rows), {r["method"]: r["test_acc"] for r in rows}

    calls = spy_trainings(monkeypatch)
    alone = run_experiment(config(colors, tmp_path / "erm", ["erm"]), log=lambda _: None)
    assert calls == ["erm"]
    erm = next(r for r in rows if r["method"] == "erm")
    for field in ("test_acc", "val_acc", "best_step"):
        assert alone[0][field] == erm[field]
    assert same_tensors(model_file(tmp_path / "erm", "erm"), model_file(out, "erm"))

    by_name = {r["method"]: r for r in rows}
    assert by_name["erm_ma"]["hparams"]["ma"] == {"start_step": 4}
    assert by_name["erm_ma"]["averaged_steps"] == [4, 12] and by_name["erm_ma"]["averaged_iterates"] == 9
    assert by_name["swad"]["hparams"]["swad"] == {"n_converge": 3, "n_tolerance": 6, "tolerance_ratio": 1.2,
                                                  "eval_every": 2}
    assert len(by_name["swad"]["swad"]["segment_losses"]) == 6  # K = 2 over 12 steps
    draws = by_name["diwa"]["hparams"]["diwa"]["draws"]
    assert [d["run"] for d in draws] == [0, 1] and by_name["diwa:greedy"]["hparams"] == by_name["diwa"]["hparams"]
    assert all(d["lr_scale"] in (0.5, 1.0, 2.0) and d["weight_decay"] in (0.0, 1e-4, 1e-2) for d in draws)
    assert set(by_name["diwa:greedy"]["ingredients"]) <= {0, 1}
    # The averages are models of their own, not erm's weights again.
    assert not same_tensors(model_file(out, "erm_ma"), model_file(out, "erm"))

    # A rerun finds every row and trains nothing.
    calls.clear()
    assert run_experiment(config(colors, out, ALL), log=lambda _: None) == [] and calls == []


def test_a_killed_shared_erm_run_resumes_to_the_same_ma_and_swad(colors, tmp_path, monkeypatch, every_method):
    full_out, full_rows = every_method
    out = tmp_path / "run"
    methods = ["erm", "erm_ma", "swad"]
    kill_in(monkeypatch, "erm", step=6)
    with pytest.raises(Killed):
        run_experiment(config(colors, out, methods, checkpoint_every=2), log=lambda _: None)
    monkeypatch.undo()
    calls = spy_trainings(monkeypatch)
    rows = run_experiment(config(colors, out, methods, checkpoint_every=2), log=lambda _: None)
    assert calls == ["erm"]  # the one shared run, resumed from its step-6 checkpoint
    full = {r["method"]: r for r in full_rows}
    for row in rows:
        assert (row["test_acc"], row["val_acc"]) == (full[row["method"]]["test_acc"], full[row["method"]]["val_acc"])
        assert same_tensors(model_file(out, row["method"]), model_file(full_out, row["method"]))
    assert rows[2]["swad"] == full["swad"]["swad"]


def test_diwa_of_identical_runs_is_that_run_and_a_killed_diwa_keeps_its_finished_runs(colors, tmp_path,
                                                                                         monkeypatch):
    # One value per hyperparameter and one seed for every run: M copies of the same training.
    monkeypatch.setattr(diwa_module, "run_seed", lambda cell_seed, index, diwa_seed: 11)
    cfg = config(colors, tmp_path / "run", ["diwa"], checkpoint_every=2,
                 diwa=DiwaConfig(runs=3, space={"lr_scale": [1.0], "weight_decay": [0.0]}))
    kill_in(monkeypatch, "diwa_1", step=4)
    with pytest.raises(Killed):
        run_experiment(cfg, log=lambda _: None)
    monkeypatch.setattr(cell_module, "Checkpointer", Checkpointer)
    calls = spy_trainings(monkeypatch)
    members: list[diwa_module.DiwaRun] = []
    real = diwa_module._train_or_load
    monkeypatch.setattr(diwa_module, "_train_or_load", lambda cell, i: members.append(real(cell, i)) or members[-1])
    rows = run_experiment(cfg, log=lambda _: None)
    assert calls == ["diwa 1", "diwa 2"]  # run 0 came back from its finished file
    assert [m.draw for m in members] == [{"lr_scale": 1.0, "weight_decay": 0.0}] * 3
    assert all(same_tensors(m.state, members[0].state) for m in members)
    for method in ("diwa", "diwa:greedy"):
        averaged = model_file(tmp_path / "run", method)
        for key, value in members[0].state.items():
            torch.testing.assert_close(averaged[key], value.cpu())
    assert rows[0]["test_acc"] == rows[1]["test_acc"] and rows[1]["ingredients"] == [0, 1, 2]
    assert not list((tmp_path / "run" / "checkpoints").rglob("*.pt"))  # finished files go with the rows


def test_diwa_draws_and_seeds_are_reproducible_and_differ_between_runs():
    space = {"lr_scale": [0.5, 1.0, 2.0], "weight_decay": [0.0, 1e-4, 1e-2]}
    draws = [diwa_module.draw_hparams(space, 0, i, 0) for i in range(8)]
    assert draws == [diwa_module.draw_hparams(space, 0, i, 0) for i in range(8)]
    assert all(d["lr_scale"] in space["lr_scale"] and d["weight_decay"] in space["weight_decay"] for d in draws)
    assert len({tuple(d.values()) for d in draws}) > 1
    seeds = {diwa_module.run_seed(0, i, 0) for i in range(8)}
    assert len(seeds) == 8 and diwa_module.run_seed(0, 0, 1) not in seeds
    train = diwa_module.run_config(TrainConfig(lr=1e-3, weight_decay=0.5), {"lr_scale": 2.0})
    assert (train.lr, train.weight_decay) == (2e-3, 0.5)


def test_an_ma_start_past_the_last_step_is_refused_before_any_work(colors, tmp_path):
    with pytest.raises(ValueError, match="ma.start_step=13 is past the last step"):
        run_experiment(config(colors, tmp_path / "run", ["erm_ma"], ma=MAConfig(start_step=13)), log=lambda _: None)
    assert not (tmp_path / "run").exists()
