import pytest
import torch

from dgmerge.merging import merge

from .helpers import finetune, t, vit_like


@pytest.mark.parametrize("base, extra", [("task_arithmetic", {"scale": 0.5}), ("ties", {"keep": 0.5}),
                                         ("rhm", {"trim": 0.3}), ("average", {})])
def test_drop_zero_is_a_no_op(base, extra):
    pre = vit_like(0)
    fts = [finetune(pre, i) for i in range(3)]
    plain = merge(base, pre, fts, **extra)
    dropped = merge("dare", pre, fts, drop=0.0, base=base, **extra)
    for key in pre:
        torch.testing.assert_close(dropped[key], plain[key])


def test_drop_keeps_or_rescales_each_entry():
    pre = {"w": torch.zeros(20_000, dtype=torch.float64)}
    tau = torch.linspace(1, 2, 20_000, dtype=torch.float64)
    out = merge("dare", pre, [{"w": tau}], drop=0.75, base="task_arithmetic")["w"]
    kept = out != 0
    # survivors are τ / (1 - p) = 4τ, the rest are 0; about a quarter survive
    torch.testing.assert_close(out[kept], 4 * tau[kept])
    assert abs(kept.double().mean().item() - 0.25) < 0.02


def test_seed_reproducible_and_generator_accepted():
    pre = {"w": torch.zeros(1000)}
    fts = [{"w": torch.ones(1000)}, {"w": 2 * torch.ones(1000)}]
    a = merge("dare", pre, fts, drop=0.5, seed=3)["w"]
    b = merge("dare", pre, fts, drop=0.5, seed=3)["w"]
    c = merge("dare", pre, fts, drop=0.5, seed=4)["w"]
    assert torch.equal(a, b) and not torch.equal(a, c)
    g1, g2 = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    assert torch.equal(merge("dare", pre, fts, drop=0.5, generator=g1)["w"],
                       merge("dare", pre, fts, drop=0.5, generator=g2)["w"])


def test_masks_differ_between_models():
    pre = {"w": torch.zeros(1000)}
    out = merge("dare", pre, [{"w": torch.ones(1000)}, {"w": torch.ones(1000)}], drop=0.5, base="task_arithmetic")
    # same τ, independent masks: sums of 0, 2 and 4 all occur
    assert set(out["w"].unique().tolist()) == {0.0, 2.0, 4.0}


def test_unsupported_base():
    with pytest.raises(Exception, match="not supported"):
        merge("dare", {"w": t(0.0)}, [{"w": t(1.0)}], base="dare")
