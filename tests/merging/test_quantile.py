import pytest
import torch

from dgmerge.merging.quantile import kth_smallest_magnitudes, magnitude_thresholds


def chunks_of(*parts):
    return lambda: [torch.tensor(p, dtype=torch.float32) for p in parts]


def test_exact_kth_over_several_chunks_with_duplicates_and_zeros():
    # row 0 concatenated: [0.5, 3, 0, 2, 2] -> sorted [0, 0.5, 2, 2, 3]
    # row 1 concatenated: [1e-30, 7, 1e30, 6, 5] -> sorted [1e-30, 5, 6, 7, 1e30]
    chunks = chunks_of([[0.5, 3.0, 0.0], [1e-30, 7.0, 1e30]], [[2.0, 2.0], [6.0, 5.0]])
    assert kth_smallest_magnitudes(chunks, [1, 1]) == [0.0, pytest.approx(1e-30, rel=1e-6)]
    assert kth_smallest_magnitudes(chunks, [2, 2]) == [0.5, 5.0]
    assert kth_smallest_magnitudes(chunks, [3, 4]) == [2.0, 7.0]
    assert kth_smallest_magnitudes(chunks, [4, 5]) == [2.0, pytest.approx(1e30, rel=1e-6)]
    assert kth_smallest_magnitudes(chunks, [5, 3]) == [3.0, 6.0]


def test_exact_kth_distinguishes_values_in_one_high_bits_bucket():
    # 1.0 and 1.0000001 share their high 16 bits; the second pass must separate them.
    values = [1.0000001, 1.0, 1.0000002]
    chunks = chunks_of([values])
    assert kth_smallest_magnitudes(chunks, [2]) == [torch.tensor(1.0000001).item()]


def test_rank_out_of_range_is_an_error():
    with pytest.raises(ValueError, match="outside"):
        kth_smallest_magnitudes(chunks_of([[1.0, 2.0]]), [3])


def test_sampled_threshold_reports_its_measured_error():
    gen = torch.Generator().manual_seed(0)
    data = torch.rand(2, 100_000, generator=gen)
    chunks = lambda: [data[:, :30_000], data[:, 30_000:]]  # noqa: E731
    (a, b) = magnitude_thresholds(chunks, 100_000, [20_000, 20_000], "sampled", sample_size=2_000, seed=3)
    for row, th in zip(data, (a, b)):
        realized = float((row <= th.value).double().mean())
        assert th.realized_fraction == pytest.approx(realized)
        assert th.error == pytest.approx(abs(realized - 0.2))
        assert th.error < th.dkw_bound  # 95% bound; seed fixed, so this is deterministic
        assert th.method == "sampled" and th.sample_size == 2_000


def test_exact_threshold_record():
    (th,) = magnitude_thresholds(chunks_of([[4.0, 1.0, 3.0, 2.0]]), 4, [3])
    assert (th.value, th.rank, th.total, th.error, th.method) == (3.0, 3, 4, 0.0, "exact")
