"""Each HAM source model's selection on source validation: scored at the run's precision, ties go
to the later step, and a run without validation sets keeps its last state."""

from __future__ import annotations

import math

import pytest

from dgmerge.config import HamConfig, TrainConfig
from dgmerge.training import ham as ham_module
from dgmerge.training.ham import stream_seed, train_ham

from .kill import domain, theta0

TRAIN = {s: domain(i) for i, s in enumerate("ab")}
VAL = {s: domain(10 + i, n=6) for i, s in enumerate("ab")}


def test_validation_runs_at_the_runs_precision(monkeypatch):
    seen = []
    real = ham_module.validation_accuracy
    monkeypatch.setattr(ham_module, "validation_accuracy",
                        lambda model, val, batch, precision: seen.append(precision) or real(model, val, batch, precision))
    train_ham(theta0(), TRAIN, VAL, TrainConfig(steps=1, batch_size=6, precision="bf16"), HamConfig(), seed=0)
    assert seen == ["bf16", "bf16"]


def test_equal_validation_accuracy_keeps_the_later_checkpoint():
    # lr 1e-12: the weights barely move, every evaluation scores the same, so the last one is kept.
    cfg = TrainConfig(steps=4, batch_size=6, lr=1e-12, eval_every=2)
    result = train_ham(theta0(), TRAIN, VAL, cfg, HamConfig(historical="none"), seed=0)
    accs = [[r[f"val_acc/{s}"] for r in result.history if f"val_acc/{s}" in r] for s in "ab"]
    assert all(len(a) == 2 and a[0] == a[1] for a in accs)
    assert result.best_steps == {"a": 4, "b": 4}


def test_without_validation_sets_each_model_keeps_its_last_state():
    cfg = TrainConfig(steps=2, batch_size=6, eval_every=1)
    result = train_ham(theta0(), TRAIN, {}, cfg, HamConfig(historical="none"), seed=0)
    assert result.best_steps == {"a": 2, "b": 2}
    assert all(math.isnan(result.history[-1][f"val_acc/{s}"]) for s in "ab")


def test_an_unknown_batch_seed_scheme_is_refused_in_full():
    with pytest.raises(ValueError, match=r"^unknown batch_seeds scheme 'pooled': use single_source or erm$"):
        stream_seed(0, 1, "pooled")
