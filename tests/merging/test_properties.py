"""Merge invariants on random shapes and dtypes (hypothesis): identity, λ = 0, r = 0, TIES without conflicts, order."""

from __future__ import annotations

import itertools

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dgmerge.merging import merge

DTYPES = {"float32": (torch.float32, 1e-5), "float64": (torch.float64, 1e-10), "bfloat16": (torch.bfloat16, 2e-2)}


@st.composite
def pools(draw, same_sign: bool = False):
    """(θ0, [θ_i], dtype name, tolerance): 1-3 tensors of random shape, 2-4 models."""
    dtype_name = draw(st.sampled_from(sorted(DTYPES)))
    dtype, tol = DTYPES[dtype_name]
    seed = draw(st.integers(0, 2**31 - 1))
    gen = torch.Generator().manual_seed(seed)
    shapes = draw(st.lists(st.lists(st.integers(1, 5), min_size=1, max_size=3), min_size=1, max_size=3))
    n = draw(st.integers(2, 4))
    theta0 = {f"t{i}": torch.randn(*s, generator=gen).to(dtype) for i, s in enumerate(shapes)}
    models = []
    for _ in range(n):
        state = {}
        for k, v in theta0.items():
            update = torch.randn(v.shape, generator=gen)
            # + 0.25 keeps every same-sign update non-zero after rounding to bfloat16 (ulp <= 1/16 below 8):
            # a zero update has no sign, so TIES' disjoint mean would rightly leave it out.
            state[k] = (v.float() + (update.abs() + 0.25 if same_sign else update)).to(dtype)
        models.append(state)
    return theta0, models, dtype_name, tol


def close(a: dict, b: dict, tol: float) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k].double(), b[k].double(), rtol=tol, atol=tol)


@settings(max_examples=40, deadline=None)
@given(pools())
def test_identical_models_merge_to_that_model(pool):
    theta0, models, _, tol = pool
    same = [models[0]] * len(models)
    for method, hparams in (("average", {}), ("task_arithmetic", {"scale": 1 / len(same)}), ("ties", {"keep": 1.0}),
                            ("rhm", {"trim": 0.0})):
        close(merge(method, theta0, same, **hparams), models[0], tol)


@settings(max_examples=40, deadline=None)
@given(pools())
def test_scale_zero_returns_theta0(pool):
    theta0, models, _, _ = pool
    for method, hparams in (("task_arithmetic", {}), ("ties", {"keep": 0.5}), ("rhm", {"trim": 0.3})):
        out = merge(method, theta0, models, **hparams, scale=0.0)
        close(out, theta0, 0.0)


@settings(max_examples=40, deadline=None)
@given(pools())
def test_rhm_with_r_zero_is_the_plain_mean(pool):
    theta0, models, _, tol = pool
    close(merge("rhm", theta0, models, trim=0.0), merge("average", theta0, models), tol)


@settings(max_examples=40, deadline=None)
@given(pools(same_sign=True))
def test_ties_keeping_everything_without_conflicts_is_the_scaled_mean_or_sum(pool):
    theta0, models, _, tol = pool
    vectors = {k: torch.stack([m[k].double() - theta0[k].double() for m in models]) for k in theta0}
    for aggregate, combine in (("mean", lambda v: v.mean(0)), ("sum", lambda v: v.sum(0))):
        want = {k: (theta0[k].double() + 0.7 * combine(v)) for k, v in vectors.items()}
        close(merge("ties", theta0, models, keep=1.0, scale=0.7, aggregate=aggregate), want, tol * 4)


@settings(max_examples=25, deadline=None)
@given(pools())
def test_the_result_does_not_depend_on_model_order(pool):
    theta0, models, _, tol = pool
    for method, hparams in (("average", {}), ("task_arithmetic", {"scale": 0.5}), ("ties", {"keep": 0.5}),
                            ("rhm", {"trim": 0.4})):
        first = merge(method, theta0, models, **hparams)
        for order in itertools.islice(itertools.permutations(models), 1, 3):
            close(merge(method, theta0, list(order), **hparams), first, tol)


def test_the_pool_strategy_draws_every_dtype():
    seen = set()

    @settings(max_examples=60, deadline=None)
    @given(pools())
    def collect(pool):
        seen.add(pool[2])

    collect()
    assert seen == set(DTYPES)
