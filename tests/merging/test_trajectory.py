import math

import pytest
import torch
from torch import nn

from dgmerge.merging import EMA, HistoricalAverage, MergeError, beta_weight


def states(*values):
    return [{"w": torch.tensor([v, 2 * v]), "n": torch.tensor(i)} for i, v in enumerate(values)]


def test_beta_weights_by_hand():
    assert beta_weight(0, 9, beta=1.0) == pytest.approx(1.0)
    assert beta_weight(5, 9, beta=1.0) == pytest.approx(1.0)
    # Beta(.5, .5) pdf = 1 / (π √(x(1−x))) at x = (0 + .5)/(9 + 1) = .05
    assert beta_weight(0, 9, beta=0.5) == pytest.approx(1 / (math.pi * math.sqrt(0.05 * 0.95)))
    # Beta(2, 2) pdf = 6 x (1 − x) at x = .55
    assert beta_weight(5, 9, beta=2.0) == pytest.approx(6 * 0.55 * 0.45)


def test_constant_weights_give_the_arithmetic_mean():
    for avg in (HistoricalAverage(weight_fn=lambda t: 3.0), HistoricalAverage(total_steps=4, beta=1.0)):
        for s in states(1.0, 2.0, 3.0, 6.0):
            avg.update(s)
        assert avg.state_dict()["w"].tolist() == pytest.approx([3.0, 6.0])
        assert int(avg.state_dict()["n"]) == 3  # integer buffers follow the latest model


def test_weighted_history_and_eq7_recursion_by_hand():
    weights = {0: 1.0, 1: 3.0, 2: 0.0, 3: 4.0}
    avg = HistoricalAverage(weight_fn=weights.__getitem__)
    for s in states(2.0, 6.0, 100.0, 1.0):
        avg.update(s)
    # (1·2 + 3·6 + 0·100 + 4·1) / 8 = 3
    assert avg.state_dict()["w"].tolist() == pytest.approx([3.0, 6.0])
    assert avg.total_weight == 8.0 and avg.step == 4


def test_u_shaped_default_matches_the_explicit_weighted_mean():
    avg = HistoricalAverage(total_steps=3)
    values = [1.0, 5.0, 2.0, 7.0]
    for s in states(*values):
        avg.update(s)
    w = [beta_weight(i, 3, 0.5) for i in range(4)]
    expected = sum(wi * v for wi, v in zip(w, values)) / sum(w)
    assert avg.state_dict()["w"][0].item() == pytest.approx(expected, rel=1e-6)


def test_ema_by_hand_and_from_a_module():
    ema = EMA(decay=0.5)
    for s in states(4.0, 8.0, 2.0):
        ema.update(s)
    # ((4·.5 + 8·.5)·.5 + 2·.5) = 0.25·4 + 0.25·8 + 0.5·2 = 4
    assert ema.state_dict()["w"].tolist() == pytest.approx([4.0, 8.0])
    model = nn.Linear(2, 1)
    ema = EMA(0.9)
    ema.update(model)
    torch.testing.assert_close(ema.state_dict()["weight"], model.weight.detach())


def test_half_precision_is_accumulated_in_float32():
    # 10 zeros then 990 ones: a running mean kept in bfloat16 stalls once (1 − avg)/(t + 1)
    # drops below its resolution; the true mean is 0.99
    avg = HistoricalAverage(weight_fn=lambda t: 1.0)
    for i in range(1000):
        avg.update({"w": torch.tensor([0.0 if i < 10 else 1.0], dtype=torch.bfloat16)})
    out = avg.state_dict()["w"]
    assert out.dtype == torch.bfloat16
    assert out.float().item() == pytest.approx(0.99, abs=0.004)


def test_export_restore_resumes_identically():
    a, b = HistoricalAverage(total_steps=5), HistoricalAverage(total_steps=5)
    seq = states(1.0, 3.0, 2.0, 8.0)
    for s in seq[:2]:
        a.update(s)
    b.restore(a.export())
    for s in seq[2:]:
        a.update(s)
        b.update(s)
    assert a.state_dict()["w"].tolist() == b.state_dict()["w"].tolist()


def test_restore_onto_a_storage_device_copies_the_saved_tensors():
    # The same loaded checkpoint may restore several runs (or be saved again): updates after a
    # restore must not write into the dict they were restored from.
    a = HistoricalAverage(weight_fn=lambda t: 1.0, device="cpu")
    for s in states(1.0, 3.0):
        a.update(s)
    saved = a.export()
    kept = {k: v.clone() for k, v in saved["average"].items()}
    b = HistoricalAverage(weight_fn=lambda t: 1.0, device="cpu")
    b.restore(saved)
    b.update(states(0.0, 0.0, 8.0)[2])
    assert b.state_dict()["w"].tolist() == pytest.approx([4.0, 8.0])  # (1 + 3 + 8) / 3
    assert all(torch.equal(saved["average"][k], kept[k]) for k in kept)


def test_restore_accepts_dtypes_given_as_torch_dtypes():
    # export() writes dtype names; a state holding torch.dtype objects (e.g. built in memory)
    # restores too, and the average comes back in those dtypes.
    a = EMA(decay=0.5)
    a.update({"w": torch.tensor([2.0, 4.0], dtype=torch.bfloat16)})
    saved = a.export()
    saved["dtypes"] = {"w": torch.bfloat16}
    b = EMA(decay=0.5, device="cpu")
    b.restore(saved)
    b.update({"w": torch.tensor([4.0, 0.0], dtype=torch.bfloat16)})
    out = b.state_dict()["w"]
    assert out.dtype == torch.bfloat16
    assert out.tolist() == [3.0, 2.0]


def test_ema_decay_zero_is_the_latest_model():
    # d = 0 is allowed ([0, 1)): avg ← θ, the average is always the latest weights.
    ema = EMA(decay=0.0)
    for s in states(4.0, 8.0, 2.0):
        ema.update(s)
    assert ema.state_dict()["w"].tolist() == [2.0, 4.0]


def test_errors():
    with pytest.raises(MergeError, match=r"^EMA decay=1.0 must be in \[0, 1\)$"):
        EMA(decay=1.0)
    with pytest.raises(MergeError, match=r"^EMA decay=-0.1 must be in \[0, 1\)$"):
        EMA(decay=-0.1)
    with pytest.raises(MergeError, match="total_steps"):
        HistoricalAverage()
    with pytest.raises(MergeError, match="no updates"):
        EMA().state_dict()
    avg = EMA()
    avg.update({"w": torch.ones(1)})
    with pytest.raises(MergeError, match="keys changed"):
        avg.update({"v": torch.ones(1)})
