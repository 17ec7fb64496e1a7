"""validation_loss (and validation_accuracy, to_batch) against values computed by hand.

The model is a lookup table: each "image" is its sample's index and the model returns a fixed
row of logits, so every sample's CE has a closed form. With logits [0, ln 3] the softmax is
[1/4, 3/4]: CE = ln(4/3) for label 1 and ln 4 for label 0. The model also records what it
saw (batch sizes, order, train/eval mode, autocast), which is how validation_loss's promises
(mean over samples, batches of `batch_size` in dataset order, eval mode, precision) are checked.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from dgmerge.training.finetune import to_batch, validation_accuracy, validation_loss

LN3 = math.log(3.0)


class Table(nn.Module):
    """logits(sample i) = rows[i]; records each forward's indices, mode and autocast state."""

    def __init__(self, rows: list[list[float]]):
        super().__init__()
        self.rows = nn.Parameter(torch.tensor(rows))
        self.seen: list[list[int]] = []
        self.modes: list[bool] = []
        self.autocast: list[tuple[bool, torch.dtype]] = []

    def forward(self, x):
        index = x[:, 0].long()
        self.seen.append(index.tolist())
        self.modes.append(self.training)
        self.autocast.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
        return self.rows[index]


def dataset(labels: list[int], first: int = 0) -> TensorDataset:
    """Samples first, first + 1, ... (their index is the image) with the given labels."""
    index = torch.arange(first, first + len(labels), dtype=torch.float32).view(-1, 1)
    return TensorDataset(index, torch.tensor(labels))


def test_mean_cross_entropy_per_domain_by_hand():
    # Every sample's logits are [0, ln 3]: CE = ln(4/3) (label 1) or ln 4 (label 0).
    model = Table([[0.0, LN3]] * 6)
    # "a": 5 samples in batches of 2, 2, 1 (a short last batch); "b": a single sample.
    losses = validation_loss(model, {"a": dataset([1, 0, 1, 1, 0]), "b": dataset([0], first=5)}, batch_size=2)
    assert list(losses) == ["a", "b"]
    # Sum over samples / number of samples, not a mean of batch means ((ln(4/3)+ln 4)/2, ln(4/3), ln 4),
    # nor the last batch alone, nor the sum.
    assert losses["a"] == pytest.approx((3 * math.log(4 / 3) + 2 * math.log(4)) / 5, rel=1e-6)
    # A one-sample domain is a valid domain (count 1 is not "empty").
    assert losses["b"] == pytest.approx(math.log(4), rel=1e-6)
    # Batches of `batch_size`, in the dataset's order (no shuffling: the float sum is reproducible).
    assert model.seen == [[0, 1], [2, 3], [4], [5]]


def test_per_sample_logits_by_hand():
    # Different logits per sample: CE_i = logsumexp(row_i) − row_i[label_i].
    rows = [[2.0, 0.0, -1.0], [0.0, 0.0, 0.0], [1.0, 3.0, 0.5]]
    labels = [0, 2, 1]
    expected = sum(math.log(sum(math.exp(v) for v in row)) - row[y] for row, y in zip(rows, labels)) / 3
    losses = validation_loss(Table(rows), {"d": dataset(labels)}, batch_size=2)
    assert losses["d"] == pytest.approx(expected, rel=1e-6)


def test_eval_mode_is_used_and_the_previous_mode_restored():
    model = Table([[0.0, LN3]] * 2)
    model.train()
    validation_loss(model, {"a": dataset([1, 0])}, batch_size=1)
    assert model.modes == [False, False]  # evaluated in eval mode (no dropout, frozen BN statistics)
    assert model.training  # and given back in train mode
    model.eval()
    validation_loss(model, {"a": dataset([1, 0])}, batch_size=1)
    assert not model.training  # a model in eval mode stays there


def test_the_global_rng_is_not_consumed():
    # A run with observers that ask for the validation loss must draw the same random numbers
    # (dropout masks, batches) as one without.
    torch.manual_seed(123)
    before = torch.get_rng_state()
    validation_loss(Table([[0.0, LN3]] * 4), {"a": dataset([1, 0, 1, 0])}, batch_size=3)
    assert torch.equal(torch.get_rng_state(), before)


def test_an_empty_domain_is_refused_by_name():
    with pytest.raises(ValueError, match=r"cannot measure the validation loss on an empty dataset \(photo\)"):
        validation_loss(Table([[0.0, LN3]]), {"art": dataset([1]), "photo": dataset([])}, batch_size=2)


def test_bf16_runs_under_autocast_and_the_loss_is_taken_in_float32():
    # The table lookup is not autocast-affected, so the loss is exact; the model sees bf16 autocast.
    model = Table([[0.0, LN3]] * 3)
    losses = validation_loss(model, {"a": dataset([1, 0, 1])}, batch_size=2, precision="bf16")
    assert losses["a"] == pytest.approx((2 * math.log(4 / 3) + math.log(4)) / 3, rel=1e-6)
    assert model.autocast == [(True, torch.bfloat16)] * 2
    model.autocast.clear()
    validation_loss(model, {"a": dataset([1, 0, 1])}, batch_size=2)
    assert [enabled for enabled, _ in model.autocast] == [False, False]  # fp32: no autocast


def test_no_memory_pinning_on_the_cpu():
    # Pinning is for host-to-GPU copies; asking for it without an accelerator only warns.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        validation_loss(Table([[0.0, LN3]] * 2), {"a": dataset([1, 0])}, batch_size=1)
    assert not [w for w in caught if "pin_memory" in str(w.message)]


def test_validation_accuracy_per_domain_by_hand():
    # Rows predict class 1, 0, 1, 0, 1 (argmax); "a" = samples 0-2 with labels [1, 1, 1] → 2/3,
    # "b" = samples 3-4 with labels [0, 0] → 1/2. Batches of 2, in bf16 autocast.
    rows = [[0.0, 1.0], [1.0, 0.0], [0.0, 2.0], [3.0, 0.0], [0.0, 1.0]]
    model = Table(rows)
    acc = validation_accuracy(model, {"a": dataset([1, 1, 1]), "b": dataset([0, 0], first=3)}, 2, precision="bf16")
    assert acc == {"a": pytest.approx(2 / 3), "b": pytest.approx(1 / 2)}
    assert model.seen == [[0, 1], [2], [3, 4]]
    assert model.autocast == [(True, torch.bfloat16)] * 3
    model.autocast.clear()
    assert validation_accuracy(model, {"a": dataset([1, 1, 1])}, 2) == {"a": pytest.approx(2 / 3)}
    assert [enabled for enabled, _ in model.autocast] == [False, False]  # fp32 by default: no autocast
    with pytest.raises(ValueError, match=r"empty dataset \(val c\)"):
        validation_accuracy(model, {"c": dataset([])}, 2)


def test_to_batch_concatenates_the_domains_in_order():
    # Per-domain batches (labels as a tensor or a list) → one batch, domains in the given order.
    batches = [(torch.tensor([[1.0], [2.0]]), torch.tensor([0, 1])), (torch.tensor([[3.0]]), [2])]
    images, labels = to_batch(batches, torch.device("cpu"))
    assert images.tolist() == [[1.0], [2.0], [3.0]]
    assert labels.tolist() == [0, 1, 2] and labels.dtype == torch.int64
    images, labels = to_batch(batches, torch.device("meta"))  # moved to the given device
    assert images.device.type == "meta" and labels.device.type == "meta" and images.shape == (3, 1)
