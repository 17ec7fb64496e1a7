"""Trimming's small pieces (shared by TIES and RHM): σ as a tensor, the mask's float32 comparison,
the |τ| chunks. The merge-level tests (test_ties.py, test_rhm.py) go through them with float32
models on the CPU; these cover dtypes and devices those do not, and the trimming settings both
merges share (no threshold pass when nothing is trimmed, the sampled thresholds' defaults)."""

import pytest
import torch

from dgmerge.merging import merge
from dgmerge.merging.quantile import Threshold, magnitude_thresholds
from dgmerge.merging.trimming import (magnitude_chunks, magnitude_mask, magnitude_sigmas, model_sigma,
                                      model_thresholds)


def threshold(value: float) -> Threshold:
    return Threshold(value=value, rank=1, total=4, target_fraction=0.25, method="exact", realized_fraction=0.25,
                     error=0.0)


def test_model_sigma_is_a_float32_column_on_the_requested_device():
    sigma = model_sigma([threshold(0.5), threshold(2.0)])
    assert sigma.tolist() == [[0.5], [2.0]] and sigma.dtype == torch.float32 and sigma.device.type == "cpu"
    # Whatever the default dtype and device (merges run under a default device in the device tests).
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        with torch.device("meta"):
            assert model_sigma([threshold(0.5)], device="cpu").device.type == "cpu"
            assert model_sigma([threshold(0.5)]).device.type == "cpu"
        assert model_sigma([threshold(0.5)]).dtype == torch.float32
    finally:
        torch.set_default_dtype(old)


def test_mask_compares_in_float32():
    # σ is a float32 value (a float32 |v|). A float64 magnitude just above it rounds to it in
    # float32: equal, so trimmed by the strict rule and kept by the ≥ rule, as on float32 models.
    sigma = torch.tensor([[0.1]], dtype=torch.float32)
    above = float(sigma) + 1e-12
    vectors = torch.tensor([[above, -above, 0.5, 0.01]], dtype=torch.float64)
    assert magnitude_mask(vectors, sigma, strict=True).tolist() == [[False, False, True, False]]
    assert magnitude_mask(vectors, sigma, strict=False).tolist() == [[True, True, True, False]]


def test_magnitude_chunks_are_float32_magnitudes_and_re_iterable():
    pre = {"w": torch.tensor([1.0, 1.0, 1.0], dtype=torch.float64)}
    fts = [{"w": torch.tensor([2.0, 0.5, 1.0], dtype=torch.float64)}, {"w": torch.tensor([0.0, 4.0, 1.0],
                                                                                      dtype=torch.float64)}]
    chunks = magnitude_chunks(pre, fts, ["w"])
    first = list(chunks())
    assert [c.dtype for c in first] == [torch.float32]
    assert torch.cat(first, dim=1).tolist() == [[1.0, 0.5, 0.0], [1.0, 3.0, 0.0]]
    assert [c.tolist() for c in chunks()] == [c.tolist() for c in first]  # a second pass sees the same


def test_model_thresholds_are_exact_by_default():
    # |τ| over both tensors: model 1 [1, 0.5, 0 | 3], model 2 [1, 3, 0 | 0.25]; rank 2 → the
    # 2nd smallest: 0.5 and 0.25, found exactly (no sampling) unless asked.
    pre = {"a": torch.ones(3), "b": torch.zeros(1)}
    fts = [{"a": torch.tensor([2.0, 0.5, 1.0]), "b": torch.tensor([3.0])},
           {"a": torch.tensor([0.0, 4.0, 1.0]), "b": torch.tensor([-0.25])}]
    found = model_thresholds(pre, fts, ["a", "b"], lambda total: 2)
    assert [t.value for t in found] == [0.5, 0.25]
    assert [t.method for t in found] == ["exact", "exact"] and [t.total for t in found] == [4, 4]


def random_models(total: int, n: int = 2) -> tuple[dict, list[dict]]:
    generator = torch.Generator().manual_seed(7)
    pre = {"w": torch.zeros(total)}
    return pre, [{"w": torch.randn(total, generator=generator)} for _ in range(n)]


def test_sampled_thresholds_follow_the_seed_they_are_given():
    # 1,000 magnitudes, 50 sampled: each seed draws other positions, so σ depends on the seed; the
    # seed must reach the sampler through model_thresholds and magnitude_sigmas (RHM's and TIES' path).
    pre, fts = random_models(1_000)
    rank = lambda total: total // 5  # noqa: E731
    def sampled(seed):
        return [t.value for t in model_thresholds(pre, fts, ["w"], rank, "sampled", 50, seed)]
    by_seed = {seed: sampled(seed) for seed in (0, 1, 2)}
    assert by_seed[0] != by_seed[1] != by_seed[2]
    direct = magnitude_thresholds(magnitude_chunks(pre, fts, ["w"]), 1_000, [200, 200], "sampled", 50, seed=2)
    assert by_seed[2] == [t.value for t in direct]
    # The default seed is 0.
    assert [t.value for t in model_thresholds(pre, fts, ["w"], rank, "sampled", 50)] == by_seed[0]
    info: dict = {}
    sigma, per_tensor = magnitude_sigmas(pre, fts, ["w"], rank, "model", "sampled", 50, 1, info)
    assert per_tensor is None and sigma.view(-1).tolist() == by_seed[1]
    assert [t["value"] for t in info["thresholds"]] == by_seed[1]


def test_sampling_draws_at_most_ten_million_magnitudes_by_default():
    # The documented default cap: a model with one magnitude more than the cap is sampled, not read whole.
    pre, fts = random_models(10_000_001, n=1)
    found = model_thresholds(pre, fts, ["w"], lambda total: total // 2, "sampled")
    assert found[0].sample_size == 10_000_000 and found[0].total == 10_000_001


OFF = {"ties": {"keep": 1.0}, "rhm": {"trim": 0.0}}
ON = {"ties": {"keep": 0.2}, "rhm": {"trim": 0.2}}


@pytest.mark.parametrize("method", ["ties", "rhm"])
def test_a_merge_that_trims_nothing_computes_no_thresholds(method):
    pre, fts = random_models(1_000)
    assert "thresholds" not in merge(method, pre, fts, **OFF[method]).info
    assert "thresholds" in merge(method, pre, fts, **ON[method]).info


@pytest.mark.parametrize("method", ["ties", "rhm"])
def test_a_merges_sampled_thresholds_default_to_seed_0_and_ten_million_magnitudes(method):
    pre, fts = random_models(1_000)

    def sigmas(**kw):
        info = merge(method, pre, fts, threshold="sampled", sample_size=50, **ON[method], **kw).info
        return [th["value"] for th in info["thresholds"]]

    assert sigmas() == sigmas(seed=0) != sigmas(seed=1)
    pre, fts = random_models(10_000_001, n=1)
    big = merge(method, pre, fts, threshold="sampled", **ON[method])
    assert big.info["thresholds"][0]["sample_size"] == 10_000_000
