import json

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from dgmerge.models.accuracy import accuracy
from dgmerge.evaluation.results import REQUIRED_FIELDS, append_result, make_row, read_results


def row(**kw):
    base = dict(dataset="PACS", test_domain="sketch", seed=0, method="erm", hparams={"lr": 1e-5},
                split={"holdout_fraction": 0.2}, selection="tdv", test_acc=0.5, wall_time_s=1.0)
    base.update(kw)
    return make_row(**base)


def test_rows_carry_every_required_field_and_append(tmp_path):
    path = tmp_path / "r" / "results.jsonl"
    append_result(path, row())
    append_result(path, row(seed=1, test_acc=0.75))
    rows = read_results(path)
    assert [r["seed"] for r in rows] == [0, 1]
    for r in rows:
        assert all(field in r for field in REQUIRED_FIELDS)
        assert r["code_version"].startswith("0.1.0")
    assert len(path.read_text().splitlines()) == 2


def test_row_missing_a_field_is_refused(tmp_path):
    bad = row()
    del bad["selection"]
    with pytest.raises(ValueError, match="selection"):
        append_result(tmp_path / "results.jsonl", bad)


def test_malformed_line_names_file_and_line(tmp_path):
    path = tmp_path / "results.jsonl"
    path.write_text(json.dumps(row()) + "\n{oops\n")
    with pytest.raises(ValueError, match=r"results.jsonl:2"):
        read_results(path)


def test_accuracy_counts_correct_predictions():
    # Identity "model" on one-hot-ish inputs: argmax of the input is the prediction.
    inputs = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    labels = torch.tensor([0, 1, 1, 1])
    assert accuracy(nn.Identity(), TensorDataset(inputs, labels), batch_size=3) == pytest.approx(0.75)


def test_accuracy_on_empty_dataset_is_an_error():
    with pytest.raises(ValueError, match="empty"):
        accuracy(nn.Identity(), TensorDataset(torch.zeros(0, 2), torch.zeros(0, dtype=torch.long)))


def test_rows_name_the_machine_that_produced_them(monkeypatch):
    monkeypatch.setattr(torch, "get_num_threads", lambda: 3)
    machine = row()["machine"]
    assert machine["threads"] == 3
    assert machine["torch"] == torch.__version__
    assert machine["cpus"] >= 1 and machine["cpu"]
