"""Every merge runs on the device its tensors live on, with the same result as on the CPU.

Without a GPU, device-cleanliness is checked with the meta trick: under `with torch.device("meta")`
a tensor created without an explicit device lands on meta, and mixing it with the CPU inputs (or
reading it with `.tolist()` / `.item()`) raises. A merge that creates its tensors on its inputs'
device gives exactly the same result inside and outside that context. The CUDA tests compare a
merge on the GPU with the same merge on the CPU where a GPU is present.
"""

from __future__ import annotations

from typing import Any, Callable

import pytest
import torch
from torch import Tensor, nn

from dgmerge.merging import EMA, HistoricalAverage, available, collect_fisher, collect_gram, merge
from dgmerge.merging.diagnostics import task_vector_report
from dgmerge.merging.regmean import min_norm_solve
from dgmerge.merging.similarity import module_similarities

from .helpers import finetune, vit_like

N = 3
META = torch.device("meta")
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


def models(dtype: torch.dtype = torch.float32) -> tuple[dict[str, Tensor], list[dict[str, Tensor]]]:
    """θ0 and N fine-tuned states: a tiny ViT, a 1×1 and a depthwise conv, and a tensor whose
    task vectors sum to exactly zero (TIES' deferred majority-sign entries)."""
    pre = vit_like(0, width=4, depth=2, dtype=dtype)
    gen = torch.Generator().manual_seed(7)
    pre["head.conv.weight"] = torch.randn(6, 4, 1, 1, generator=gen).to(dtype)
    pre["head.dw.weight"] = torch.randn(4, 1, 3, 3, generator=gen).to(dtype)
    pre["head.tied"] = torch.zeros(5, dtype=dtype)
    fts = [finetune(pre, i) for i in range(N)]
    tied = torch.tensor([1.0, -2.0, 0.5, 4.0, -1.0]).to(dtype)
    for state, sign in zip(fts, (1.0, -1.0, 0.0)):
        state["head.tied"] = sign * tied
    return pre, fts


def grams(pre: dict[str, Tensor], dead: bool = False) -> list[dict[str, Tensor]]:
    """One Gram dict per model for every 2-D weight and 1×1 conv; `dead` zeroes an input
    (a singular summed Gram: RegMean's least-squares fallback)."""
    out = []
    for i in range(N):
        gen = torch.Generator().manual_seed(100 + i)
        g = {}
        for key, value in pre.items():
            if value.dim() == 2 or (value.dim() == 4 and tuple(value.shape[2:]) == (1, 1)):
                x = torch.randn(3 * value.shape[1], value.shape[1], generator=gen)
                if dead:
                    x[:, 0] = 0.0
                g[key] = x.T @ x / x.shape[0]
        out.append(g)
    return out


def fishers(pre: dict[str, Tensor]) -> list[dict[str, Tensor]]:
    gen = torch.Generator().manual_seed(200)
    return [{k: torch.rand(v.shape, generator=gen) for k, v in pre.items() if v.is_floating_point() and v.dim() > 1}
            for _ in range(N)]


def evaluate(state: dict[str, Tensor]) -> float:
    """A validation score for greedy_soup that prefers some soups over others."""
    return -float(state["blocks.0.mlp.fc1.weight"].sum().abs())


# Per method, the calls to check: functions of θ0 returning the hyperparameters (called anew for
# each run, so a torch.Generator starts from the same state each time). A newly registered method
# fails test_every_method_has_cases until it is added here.
Case = Callable[[dict[str, Tensor]], dict[str, Any]]
CASES: dict[str, dict[str, Case]] = {
    "average": {"uniform": lambda p: {}, "weighted": lambda p: {"weights": [1.0, 2.0, 3.0]}},
    "task_arithmetic": {"scale": lambda p: {"scale": 0.5}},
    "ties": {
        "model": lambda p: {"keep": 0.3},
        "tensor": lambda p: {"keep": 0.3, "level": "tensor"},
        "sampled": lambda p: {"keep": 0.3, "threshold": "sampled", "sample_size": 64, "seed": 3},
        "keep_all_sum": lambda p: {"keep": 1.0, "aggregate": "sum", "scale": 0.7},
    },
    "dare": {
        "task_arithmetic": lambda p: {"drop": 0.5, "seed": 1, "scale": 0.5},
        "ties": lambda p: {"drop": 0.3, "base": "ties", "keep": 0.5},
        "generator": lambda p: {"drop": 0.4, "generator": torch.Generator().manual_seed(5)},
        "no_rescale": lambda p: {"drop": 0.5, "rescale": False, "base": "average"},
    },
    "rhm": {
        "model": lambda p: {"trim": 0.3},
        "tensor": lambda p: {"trim": 0.3, "level": "tensor"},
        "sampled": lambda p: {"trim": 0.3, "threshold": "sampled", "sample_size": 64, "seed": 2},
        "no_trim": lambda p: {"trim": 0.0},
    },
    "regmean": {
        "matrix": lambda p: {"grams": grams(p)},
        "conv1x1_mean": lambda p: {"grams": grams(p), "conv1x1": "mean", "alpha": 0.5},
        "dead_input": lambda p: {"grams": grams(p, dead=True), "alpha": 1.0},
    },
    "fisher": {
        "plain": lambda p: {"fishers": fishers(p)},
        "weighted": lambda p: {"fishers": fishers(p), "weights": [1.0, 0.0, 2.0], "eps": 0.0},
    },
    "tsv": {"plain": lambda p: {}, "scaled": lambda p: {"scale": 0.5}},
    "score": {
        **{variant: (lambda p, v=variant: {"variant": v}) for variant in ("v1", "v2", "v3", "v4", "v4-upstream")},
        "conv1x1_mean": lambda p: {"conv1x1": "mean", "divide_tau_by_tasks": False},
    },
    "lwptv": {
        "fraction": lambda p: {"eta": 0.5},
        "after_ties": lambda p: {"eta": 0.5, "mode": "after", "base": "ties", "keep": 0.5},
        "absolute_share": lambda p: {"eta": 0.3, "threshold": "absolute", "saliency": "share", "unit": "tensor"},
    },
    "greedy_soup": {"evaluate": lambda p: {"evaluate": evaluate}},
}

# SCORE's trim of off-diagonal outliers depends on the signs of singular vectors, which LAPACK
# and cuSOLVER may choose differently; the sign-invariant variants are compared across devices.
CUDA_SKIP = {("score", "v1"), ("score", "v3"), ("score", "v4-upstream"), ("score", "conv1x1_mean")}


def cases(method: str) -> dict[str, Case]:
    if method not in CASES:
        pytest.fail(f"tests/merging/test_device.py does not know how to call {method!r}: add it to CASES")
    return CASES[method]


def all_cases() -> list[tuple[str, str]]:
    return [(m, c) for m in available() for c in CASES.get(m, {"<unknown>": None})]


def assert_identical(got: dict[str, Tensor], want: dict[str, Tensor], device: torch.device | str = "cpu") -> None:
    assert list(got) == list(want)
    for key, value in want.items():
        assert got[key].device == torch.device(device), key
        assert got[key].dtype == value.dtype and got[key].shape == value.shape, key
        assert torch.equal(got[key], value), key


def test_every_method_has_cases():
    unknown = [m for m in available() if m not in CASES]
    assert not unknown, f"add {unknown} to CASES in tests/merging/test_device.py"


@pytest.mark.parametrize("method, case", all_cases())
def test_merge_creates_its_tensors_on_the_inputs_device(method, case):
    make = cases(method)[case]
    for dtype in (torch.float32, torch.bfloat16, torch.float64):
        pre, fts = models(dtype)
        want = merge(method, pre, fts, **make(pre))
        hparams = make(pre)  # statistics and generators made on the CPU, outside the meta default
        with torch.device(META):
            got = merge(method, pre, fts, **hparams)
        assert_identical(got, want)
        assert got.info == want.info


def test_regmean_fallback_off_the_cpu_gives_lapacks_minimum_norm_solution():
    # CUDA's lstsq cannot solve a singular system; min_norm_solve uses the pseudo-inverse there.
    # Its answer, computed here on the CPU, is gelsd's (what min_norm_solve returns on the CPU).
    gram = grams(models()[0], dead=True)[0]["blocks.0.attn.proj.weight"].double()
    rhs = torch.randn(4, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert int(torch.linalg.cholesky_ex(gram).info) != 0
    torch.testing.assert_close(torch.linalg.pinv(gram, hermitian=True) @ rhs, min_norm_solve(gram, rhs))


def test_diagnostics_and_similarity_are_device_clean():
    pre, fts = models()
    want = task_vector_report(pre, fts)
    sims = module_similarities(fts, pretrained=pre), module_similarities(fts, attention="separate")
    with torch.device(META):
        assert task_vector_report(pre, fts) == want
        assert (module_similarities(fts, pretrained=pre), module_similarities(fts, attention="separate")) == sims


class Tiny(nn.Module):
    """A linear layer, a 1×1 conv and self-attention: every kind of layer collect_gram hooks."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 1)
        # Sequence-first: batch_first=True takes torch's fused fast path in eval mode, which any
        # torch-function mode (the meta default device is one) turns off, changing the numerics.
        self.attn = nn.MultiheadAttention(4, 2)
        self.head = nn.Linear(4, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv(x).flatten(2).permute(2, 0, 1)  # [pixels, B, 4]
        h = self.attn(h, h, h, need_weights=False)[0]
        return self.head(h.mean(dim=0))


def tiny_data() -> tuple[Tiny, list[tuple[Tensor, Tensor]]]:
    torch.manual_seed(0)
    model = Tiny()
    gen = torch.Generator().manual_seed(1)
    batches = [(torch.randn(3, 2, 2, 2, generator=gen), torch.tensor([0, 2, 1])) for _ in range(2)]
    return model, batches


def test_collect_gram_is_device_clean():
    model, batches = tiny_data()
    want = collect_gram(model, batches, conv1x1=True)
    assert set(want) == {"conv.weight", "attn.in_proj_weight", "head.weight"}
    with torch.device(META):
        got = collect_gram(model, batches, conv1x1=True)
    assert_identical(got, want)


@pytest.mark.parametrize("labels", ["model", "true"])
def test_collect_fisher_is_device_clean(labels):
    model, batches = tiny_data()
    want = collect_fisher(model, batches, labels=labels)
    with torch.device(META):
        got = collect_fisher(model, batches, labels=labels)
    assert_identical(got, want)


def trajectory(dtype: torch.dtype, steps: int = 4) -> list[dict[str, Tensor]]:
    gen = torch.Generator().manual_seed(3)
    return [{"w": torch.randn(2, 3, generator=gen).to(dtype), "n": torch.tensor(i)} for i in range(steps)]


def averages(device: str | torch.device | None) -> list[EMA | HistoricalAverage]:
    return [EMA(0.7, device=device), HistoricalAverage(total_steps=4, device=device),
            HistoricalAverage(weight_fn=lambda t: float(t + 1), device=device)]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_running_averages_on_the_cpu_match_the_default(dtype):
    states = trajectory(dtype)
    for stored, default in zip(averages("cpu"), averages(None)):
        for state in states:
            stored.update(state)
            default.update(state)
        assert stored.device == torch.device("cpu") and default.device is None
        got, want = stored.state_dict(), default.state_dict()
        assert_identical(got, want)
        assert got["w"].dtype == dtype
        accumulator = stored.export()["average"]["w"]
        assert accumulator.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)


def test_running_averages_take_updates_of_another_dtype():
    # Started from float32 weights; later updates in float64 and bfloat16 are cast to the accumulator.
    first, *rest = trajectory(torch.float32)
    mixed = [first] + [{"w": s["w"].to(d), "n": s["n"]} for s, d in zip(rest, (torch.float64, torch.bfloat16, torch.float64))]
    for stored, default in zip(averages("cpu"), averages(None)):
        for state in mixed:
            stored.update(state)
            default.update({"w": state["w"].to(torch.float32), "n": state["n"]})
        assert_identical(stored.state_dict(), default.state_dict())


def test_running_averages_keep_their_tensors_on_the_storage_device():
    # No GPU here: meta storage stands in for "a device other than the model's".
    states = trajectory(torch.float32)
    for avg in averages(META):
        for state in states:
            avg.update(state)
        assert all(v.device == META for v in avg.state_dict().values())
        assert all(v.device == META for v in avg.export()["average"].values())
    saved = averages(None)[0]
    saved.update(states[0])
    restored = EMA(0.7, device=META)
    restored.restore(saved.export())
    assert all(v.device == META for v in restored.state_dict().values())
    restored.update(states[1])  # a CPU model's update reaches the meta storage
    assert restored.updates == 2


def test_running_averages_are_device_clean():
    states = trajectory(torch.float32)
    for device in ("cpu", None):
        want_avgs, got_avgs = averages(device), averages(device)
        for state in states:
            for avg in want_avgs:
                avg.update(state)
        with torch.device(META):
            for state in states:
                for avg in got_avgs:
                    avg.update(state)
            results = [avg.state_dict() for avg in got_avgs]
            copies = averages(device)
            for copy, avg in zip(copies, got_avgs):
                copy.restore(avg.export())
        for got, copy, avg in zip(results, copies, want_avgs):
            assert_identical(got, avg.state_dict())
            assert_identical(copy.state_dict(), avg.state_dict())


def test_a_restored_default_average_follows_the_model():
    # A checkpoint loads onto the CPU; with device=None the average rejoins the model's device
    # on the next update (here meta stands in for the model's device).
    states = trajectory(torch.float32)
    saved = EMA(0.5)
    saved.update(states[0])
    restored = EMA(0.5)
    restored.restore(saved.export())
    restored.update({k: v.to(META) for k, v in states[1].items()})
    assert all(v.device == META for v in restored.state_dict().values())


def to_cuda(value: Any) -> Any:
    if isinstance(value, Tensor):
        return value.cuda()
    if isinstance(value, dict):
        return {k: to_cuda(v) for k, v in value.items()}
    if isinstance(value, list):
        return [to_cuda(v) for v in value]
    return value


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("method, case", all_cases())
def test_merge_on_cuda_matches_the_cpu(method, case):
    if (method, case) in CUDA_SKIP:
        pytest.skip("depends on the singular vectors' signs, which differ between LAPACK and cuSOLVER")
    make = cases(method)[case]
    for dtype in (torch.float32, torch.float64):
        pre, fts = models(dtype)
        want = merge(method, pre, fts, **make(pre))
        got = merge(method, to_cuda(pre), to_cuda(fts), **to_cuda(make(pre)))
        assert list(got) == list(want)
        for key, value in want.items():
            assert got[key].device.type == "cuda" and got[key].dtype == value.dtype, key
            tol = 1e-4 if dtype == torch.float32 else 1e-9
            torch.testing.assert_close(got[key].cpu(), value, rtol=tol, atol=tol, msg=key)


@pytest.mark.cuda
@cuda
def test_statistics_on_cuda_match_the_cpu():
    model, batches = tiny_data()
    want_gram = collect_gram(model, batches, conv1x1=True)
    want_fisher = collect_fisher(model, batches, labels="true")
    got_gram = collect_gram(model, batches, conv1x1=True, device="cuda")
    got_fisher = collect_fisher(model, batches, labels="true", device="cuda")
    for got, want in ((got_gram, want_gram), (got_fisher, want_fisher)):
        assert set(got) == set(want)
        for key, value in want.items():
            assert got[key].device.type == "cuda"
            torch.testing.assert_close(got[key].cpu(), value, rtol=1e-4, atol=1e-5)


@pytest.mark.cuda
@cuda
def test_running_averages_on_the_cpu_for_a_cuda_model():
    states = trajectory(torch.float32)
    for stored, default in zip(averages("cpu"), averages(None)):
        for state in states:
            stored.update(to_cuda(state))
            default.update(state)
        got = stored.state_dict()
        assert all(v.device.type == "cpu" for v in got.values())
        torch.testing.assert_close(got, default.state_dict())
        restored = EMA(0.7, device="cpu") if isinstance(stored, EMA) else HistoricalAverage(total_steps=4, device="cpu")
        restored.restore(to_cuda(stored.export()))
        assert all(v.device.type == "cpu" for v in restored.state_dict().values())
