"""Merging a finished HAM run again (how ablations reuse one training): which states each
`historical` setting may merge, what the merge records, and what the run reports."""

from __future__ import annotations

import time

import pytest

from dgmerge.config import HamConfig, TrainConfig
from dgmerge.training.ham import merge_trained, train_ham

from .kill import domain, theta0

TRAIN = {s: domain(i) for i, s in enumerate("abc")}
VAL = {s: domain(10 + i, n=6) for i, s in enumerate("abc")}
CFG = TrainConfig(steps=2, batch_size=6, eval_every=1)


@pytest.fixture(scope="module")
def beta_run():
    before = time.perf_counter()
    result = train_ham(theta0(), TRAIN, VAL, CFG, HamConfig(), seed=0)
    return result, time.perf_counter() - before


def test_a_run_merges_again_only_from_the_averages_it_kept(beta_run):
    result, _ = beta_run
    theta0_state = theta0().state_dict()
    with pytest.raises(ValueError, match=r"^this run kept no 'ema' averages \(it merged 'historical'\)$"):
        merge_trained(result, theta0_state, HamConfig(historical="ema"))
    best = train_ham(theta0(), TRAIN, VAL, CFG, HamConfig(historical="none"), seed=0)
    with pytest.raises(ValueError, match=r"^this run kept no 'beta' averages \(it merged 'best'\)$"):
        merge_trained(best, theta0_state, HamConfig())
    # Every run keeps its best checkpoints, so historical "none" can always be merged.
    assert merge_trained(result, theta0_state, HamConfig(historical="none")).keys() == result.merged_state.keys()


def test_the_merge_records_its_method_and_scope_and_the_run_its_wall_time(beta_run):
    result, elapsed = beta_run
    assert result.merged_state.info["method"] == "rhm" and result.merged_state.info["scope"] == "trainable"
    full = merge_trained(result, theta0().state_dict(), HamConfig(merge_scope="all", merge_method="ties"))
    assert full.info["method"] == "ties" and full.info["scope"] == "all"
    assert 0 < result.wall_time_s <= elapsed
