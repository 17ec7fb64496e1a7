import math

import pytest
import torch

from dgmerge.training.sae import max_confidence, select_confident


def logits_for(confidences):
    """Two-class logits whose max softmax is exactly each given confidence (≥ 0.5)."""
    return torch.tensor([[0.0, math.log(c / (1 - c))] for c in confidences])


def test_max_confidence_is_the_max_softmax_and_detached():
    logits = logits_for([0.75, 0.5, 0.9]).requires_grad_(True)
    conf = max_confidence(logits)
    assert conf.tolist() == pytest.approx([0.75, 0.5, 0.9])
    assert not conf.requires_grad


def test_hand_made_batch_borrows_exactly_the_samples_above_tau():
    own = torch.tensor([0.75, 0.5])  # τ = 0.625
    foreign = {"b": torch.tensor([0.9, 0.5, 0.7, 0.625]), "c": torch.tensor([0.6, 0.99])}
    sel = select_confident(own, foreign)
    assert sel.tau == pytest.approx(0.625)
    assert sel.threshold == pytest.approx(0.625)
    # 0.625 is not borrowed: Eq. 3 needs max f_i(x) > τ_i strictly.
    assert sel.indices["b"].tolist() == [0, 2]
    assert sel.indices["c"].tolist() == [1]
    assert sel.counts() == {"b": 2, "c": 1}
    assert sel.total == 3


def test_margin_raises_the_threshold():
    own = torch.tensor([0.75, 0.5])
    foreign = {"b": torch.tensor([0.9, 0.5, 0.7, 0.8])}
    sel = select_confident(own, foreign, margin=0.1)  # threshold 0.725
    assert sel.threshold == pytest.approx(0.725)
    assert sel.indices["b"].tolist() == [0, 3]
    assert select_confident(own, foreign, margin=0.5).total == 0


def test_cap_keeps_the_most_confident_in_batch_order():
    own = torch.tensor([0.5, 0.5])
    foreign = {"b": torch.tensor([0.7, 0.95, 0.6, 0.9, 0.8]), "c": torch.tensor([0.55])}
    sel = select_confident(own, foreign, max_borrow=2)
    assert sel.indices["b"].tolist() == [1, 3]  # 0.95 and 0.9, returned in batch order
    assert sel.indices["c"].tolist() == [0]  # under the cap: untouched


def test_nothing_foreign_or_nothing_confident():
    own = torch.tensor([0.9])
    assert select_confident(own, {}).total == 0
    assert select_confident(own, {"b": torch.tensor([0.5, 0.8])}).counts() == {"b": 0}
    with pytest.raises(ValueError, match=r"^SAE needs a non-empty own batch to set τ_i$"):
        select_confident(torch.tensor([]), {"b": torch.tensor([0.5])})


def test_cap_breaks_ties_by_batch_order():
    # 32 foreign samples, all above τ = 0.5: 0.8 at even positions, 0.9 at odd ones. A cap of 4
    # must keep the first four 0.9s in the batch (1, 3, 5, 7): the choice among equally confident
    # samples is the stream's order, not whatever an unstable sort leaves (on this many elements
    # torch's default sort does reorder ties), so runs are reproducible.
    foreign = {"b": torch.tensor([0.8, 0.9] * 16)}
    sel = select_confident(torch.tensor([0.5]), foreign, max_borrow=4)
    assert sel.indices["b"].tolist() == [1, 3, 5, 7]
    # 16 + 3: all sixteen 0.9s, then the first three 0.8s (0, 2, 4), in batch order.
    sel = select_confident(torch.tensor([0.5]), foreign, max_borrow=19)
    assert sel.indices["b"].tolist() == [0, 1, 2, 3, 4, 5] + list(range(7, 32, 2))
