"""TensorBoard scalar logs of training history, and their no-op fallbacks."""

from __future__ import annotations

import math
import sys

import pytest

from dgmerge.training.scalars import open_scalar_log

RECORDS = [
    {"step": 1, "loss": 0.9, "lr": 1e-5, "loss/photo": 0.8, "borrowed/photo": 5, "sign_conflict": 0.12,
     "hist_weight": 0.01, "val_acc": float("nan"), "domain": "photo", "resumed": True},
    {"step": 2, "loss": 0.7, "lr": 2e-5, "loss/photo": 0.6, "borrowed/photo": 7, "sign_conflict": 0.10,
     "hist_weight": 0.02, "val_acc": 0.7, "val_acc/photo": 0.6, "note": None},
]


def test_records_are_written_as_scalars_and_read_back(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with open_scalar_log(tmp_path / "tb") as log:
        for record in RECORDS:
            log.write(record["step"], record)
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    assert sorted(events.Tags()["scalars"]) == sorted(
        ["loss", "lr", "loss/photo", "borrowed/photo", "sign_conflict", "hist_weight", "val_acc", "val_acc/photo"])
    for tag in events.Tags()["scalars"]:
        expected = [(r["step"], r[tag]) for r in RECORDS
                    if tag in r and not (isinstance(r[tag], float) and math.isnan(r[tag]))]
        got = [(e.step, e.value) for e in events.Scalars(tag)]
        assert [s for s, _ in got] == [s for s, _ in expected], tag
        assert [v for _, v in got] == pytest.approx([v for _, v in expected], rel=1e-6), tag


def test_no_log_dir_is_a_silent_no_op(tmp_path):
    log = open_scalar_log(None)
    log.write(1, RECORDS[0])
    log.close()
    log.close()
    assert list(tmp_path.iterdir()) == []


def test_missing_tensorboard_is_a_silent_no_op(tmp_path, monkeypatch):
    # None in sys.modules makes `import` raise ImportError, as when the extra is not installed.
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with open_scalar_log(tmp_path / "tb") as log:
        log.write(1, RECORDS[0])
    assert not (tmp_path / "tb").exists()
