"""Properties every method must have, on a tiny ViT-shaped model with an integer buffer."""

import pytest
import torch

from dgmerge.merging import available, merge

from .helpers import finetune, vit_like

N = 3

# Settings under which a method is expected to return θ when all N models equal θ. Methods
# that trim (ties k < 1, rhm r > 0, dare p > 0) change even identical task vectors, and the
# summing ones (task_arithmetic, tsv, score) need λ = 1/N; tsv/score's truncated shared basis
# is exact only for one model (with N identical models the polar factor is not unique).
IDENTITY = {
    "average": {}, "task_arithmetic": {"scale": 1 / N}, "ties": {"keep": 1.0}, "rhm": {"trim": 0.0},
    "dare": {"drop": 0.0, "scale": 1 / N}, "lwptv": {"eta": 0.0, "scale": 1 / N},
    "greedy_soup": {"evaluate": lambda s: 1.0}, "tsv": {}, "score": {},
}


def stats(method, pre, n):
    if method == "regmean":
        return {"grams": [{k: torch.eye(v.shape[1]) + 0.1 for k, v in pre.items() if v.dim() == 2}] * n}
    if method == "fisher":
        return {"fishers": [{k: torch.rand(v.shape) for k, v in pre.items() if v.is_floating_point()}] * n}
    return {}


@pytest.mark.parametrize("method", available())
def test_identical_models_give_that_model(method):
    pre, model = vit_like(0), finetune(vit_like(0), 1)
    n = 1 if method in ("tsv", "score") else N
    out = merge(method, pre, [model] * n, **IDENTITY.get(method, {}), **stats(method, pre, n))
    for key, value in model.items():
        if value.is_floating_point():
            torch.testing.assert_close(out[key], value, rtol=1e-5, atol=1e-5, msg=key)
        else:
            assert torch.equal(out[key], pre[key])


@pytest.mark.parametrize("method, hparams", [
    ("task_arithmetic", {"scale": 0.0}), ("ties", {"scale": 0.0}), ("rhm", {"scale": 0.0}),
    ("dare", {"scale": 0.0}), ("tsv", {"scale": 0.0}), ("score", {"scale": 0.0}),
    ("lwptv", {"eta": 0.0, "scale": 0.0}), ("dare", {"base": "ties", "scale": 0.0}),
])
def test_lambda_zero_gives_the_pretrained_model(method, hparams):
    pre = vit_like(0)
    fts = [finetune(pre, i) for i in range(N)]
    out = merge(method, pre, fts, **hparams)
    for key, value in pre.items():
        torch.testing.assert_close(out[key], value, rtol=0, atol=0, msg=key)


@pytest.mark.parametrize("method", available())
def test_dtypes_and_shapes_follow_the_pretrained_model(method):
    pre = {k: (v.to(torch.bfloat16) if v.is_floating_point() else v) for k, v in vit_like(0).items()}
    fts = [finetune(pre, i) for i in range(2)]
    extra = {**IDENTITY.get(method, {}), **stats(method, pre, 2)}
    extra.pop("scale", None)
    out = merge(method, pre, fts, **extra)
    assert {k: (v.dtype, v.shape) for k, v in out.items()} == {k: (v.dtype, v.shape) for k, v in pre.items()}
    assert all(torch.isfinite(v.float()).all() for v in out.values())
