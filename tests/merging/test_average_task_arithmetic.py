from dgmerge.merging import merge

from .helpers import t


def test_average_and_weighted_average_by_hand():
    pre = {"w": t(0.0, 0.0)}
    fts = [{"w": t(1.0, 2.0)}, {"w": t(3.0, 6.0)}]
    assert merge("average", pre, fts)["w"].tolist() == [2.0, 4.0]
    # (1·[1, 2] + 3·[3, 6]) / 4
    assert merge("average", pre, fts, weights=[1.0, 3.0])["w"].tolist() == [2.5, 5.0]


def test_task_arithmetic_by_hand():
    pre = {"w": t(1.0, 1.0)}
    fts = [{"w": t(2.0, 3.0)}, {"w": t(0.0, 5.0)}]  # τ = [1, 2], [-1, 4]; Σ = [0, 6]
    assert merge("task_arithmetic", pre, fts, scale=0.5)["w"].tolist() == [1.0, 4.0]
    assert merge("task_arithmetic", pre, fts)["w"].tolist() == [1.0, 7.0]
