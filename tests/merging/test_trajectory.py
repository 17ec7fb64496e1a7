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


META = torch.device("meta")


def test_beta_weight_default_is_the_u_shaped_half():
    # β defaults to 0.5 (HAM's U shape): Beta(.5, .5) pdf at x = .05.
    assert beta_weight(0, 9) == pytest.approx(1 / (math.pi * math.sqrt(0.05 * 0.95)))
    with pytest.raises(MergeError, match=r"^beta=0 must be > 0$"):
        beta_weight(0, 9, beta=0)


def test_constructor_checks_with_their_full_messages():
    HistoricalAverage(total_steps=1)  # one step is a valid schedule
    with pytest.raises(MergeError, match=r"^HistoricalAverage needs total_steps ≥ 1 \(or a weight_fn\)$"):
        HistoricalAverage(total_steps=0)
    with pytest.raises(MergeError, match=r"^beta=0 must be > 0$"):
        HistoricalAverage(total_steps=5, beta=0)
    with pytest.raises(MergeError, match=r"^the running average has no updates yet; call update\(model\) first$"):
        EMA().state_dict()
    avg = EMA()
    avg.update({"w": torch.ones(1)})
    with pytest.raises(MergeError, match=r"^the model's keys changed between updates of the running average$"):
        avg.update({"v": torch.ones(1)})


@pytest.mark.parametrize("weight", [-1.0, math.inf, math.nan])
def test_negative_or_non_finite_weights_are_refused(weight):
    avg = HistoricalAverage(weight_fn=lambda t: weight)
    with pytest.raises(MergeError, match=rf"^historical weight γ_0={weight} must be finite and ≥ 0$"):
        avg.update({"w": torch.ones(1)})


def test_explicit_steps_choose_the_weight_and_updates_are_counted():
    avg = HistoricalAverage(weight_fn=lambda t: t + 1.0)
    assert avg.update({"w": torch.tensor([1.0])}, step=4) == 5.0  # γ of the given step, not of 0
    assert avg.update({"w": torch.tensor([4.0])}) == 6.0  # then continues from step 5
    assert avg.update({"w": torch.tensor([0.0])}, step=1) == 2.0
    assert avg.updates == 3 and avg.step == 2
    assert avg.export()["updates"] == 3
    assert avg.state_dict()["w"].item() == pytest.approx((5 * 1 + 6 * 4 + 2 * 0) / 13)


def test_weights_below_one_still_give_the_weighted_mean():
    # Total weight stays ≤ 1 for the first updates (0.25, 0.5, 0.75): the recursion must not
    # treat a small total as "nothing yet".
    avg = HistoricalAverage(weight_fn=lambda t: 0.25)
    for s in states(1.0, 2.0, 6.0):
        avg.update(s)
    assert avg.state_dict()["w"].tolist() == pytest.approx([3.0, 6.0])


def test_zero_weight_steps_after_the_first_leave_the_average_alone():
    # θ0 starts the average; a later step of weight 0 (total weight still 0) must not replace it.
    avg = HistoricalAverage(weight_fn=lambda t: 0.0)
    avg.update({"w": torch.tensor([1.0])})
    avg.update({"w": torch.tensor([9.0])})
    assert avg.state_dict()["w"].item() == 1.0


@pytest.mark.parametrize("device", [None, "cpu"])
def test_the_average_never_aliases_the_model_or_its_own_output(device):
    # The first update copies θ (else the next blend would rewrite the model's weights in place),
    # and state_dict returns a copy (else later updates would change what was handed out).
    first = {"w": torch.tensor([4.0, 8.0])}
    ema = EMA(decay=0.5, device=device)
    ema.update(first)
    out = ema.state_dict()
    ema.update({"w": torch.tensor([0.0, 0.0])})
    assert first["w"].tolist() == [4.0, 8.0]
    assert out["w"].tolist() == [4.0, 8.0]
    assert ema.state_dict()["w"].tolist() == [2.0, 4.0]


@pytest.mark.parametrize("device", [None, "cpu"])
def test_large_integer_buffers_are_kept_exactly(device):
    # Integer buffers (e.g. BatchNorm's num_batches_tracked) are not floats: stored as float32
    # they would lose 2**25 + 1.
    avg = HistoricalAverage(weight_fn=lambda t: 1.0, device=device)
    avg.update({"n": torch.tensor(2**25 + 1), "w": torch.ones(1)})
    assert avg.state_dict()["n"].item() == 2**25 + 1
    avg.update({"n": torch.tensor(2**25 + 3), "w": torch.ones(1)})
    assert avg.state_dict()["n"].item() == 2**25 + 3


def test_half_precision_is_accumulated_in_float32_on_a_storage_device_too():
    avg = HistoricalAverage(weight_fn=lambda t: 1.0, device="cpu")
    for i in range(1000):
        avg.update({"w": torch.tensor([0.0 if i < 10 else 1.0], dtype=torch.bfloat16)})
    assert avg._avg["w"].dtype == torch.float32
    out = avg.state_dict()["w"]
    assert out.dtype == torch.bfloat16
    assert out.float().item() == pytest.approx(0.99, abs=0.004)


def test_a_storage_device_holds_the_average():
    # The meta device stands in for "elsewhere than the model" (a GPU model with averages on the CPU).
    for avg in (EMA(0.5, device=META), HistoricalAverage(total_steps=3, device=META)):
        assert avg.device == META
        for s in states(1.0, 2.0):
            avg.update(s)
        assert all(v.device == META for v in avg.state_dict().values())


def test_averages_join_the_model_or_stay_on_their_storage_device():
    # No storage device: an average restored on the CPU (checkpoints load there) joins the
    # model's device at the next update. A storage device: the model's tensors are brought to it.
    saved = EMA(0.5)
    saved.update(states(1.0)[0])
    restored = EMA(0.5)
    restored.restore(saved.export())
    restored.update({k: v.to(META) for k, v in states(1.0, 2.0)[1].items()})
    assert all(v.device == META for v in restored.state_dict().values())
    kept = EMA(0.5, device=META)
    kept.restore(saved.export())
    kept.update(states(1.0, 2.0)[1])
    assert all(v.device == META for v in kept.state_dict().values())
