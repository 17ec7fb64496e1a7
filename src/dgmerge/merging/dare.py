"""DARE (Yu et al.): drop each task-vector entry with probability p, rescale by 1/(1−p), then merge.

The drop is applied lazily per tensor in front of any base method, with one random stream
per (model, tensor) derived by hashing (seed, model index, key): results do not depend on
the order in which the base method reads tensors, or on how many passes it makes. The
streams are CPU generators and the masks are moved to the tensors' device, so a seed gives
the same masks, and the same merge, on every device.
"""

from __future__ import annotations

import hashlib
from typing import Any, Sequence

import torch
from torch import Tensor

from dgmerge.merging.registry import MergedState, register, run_unchecked
from dgmerge.merging.task_vectors import DerivedStateDict, compute_dtype
from dgmerge.merging.validate import MergeError, Param, StateDict, is_float


def derived_seed(seed: int, *parts: Any) -> int:
    """A stable 63-bit seed for one stream, from the run seed and the stream's identity."""
    text = ":".join(str(p) for p in (seed, *parts))
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1


def drop_and_rescale(vector: Tensor, drop: float, generator: torch.Generator, rescale: bool = True) -> Tensor:
    """Zero each entry with probability `drop`; survivors × 1/(1−drop) keep the expectation.

    The uniforms are drawn on the generator's device; the mask is moved to the vector's.
    """
    if drop == 0:
        return vector
    keep = (torch.rand(vector.shape, generator=generator, device=generator.device) >= drop).to(vector.device)
    kept = torch.where(keep, vector, torch.zeros((), dtype=vector.dtype, device=vector.device))
    return kept / (1.0 - drop) if rescale else kept


def dropped_models(pretrained: StateDict, finetuned: Sequence[StateDict], drop: float, seed: int,
                   rescale: bool = True) -> list[DerivedStateDict]:
    """Lazy views θ0 + DARE(τ_i) of the fine-tuned models (computed per tensor on access)."""
    views = []
    for index, state in enumerate(finetuned):
        def compute(key: str, state: StateDict = state, index: int = index) -> Tensor:
            base = pretrained[key]
            if not is_float(base):
                return base
            dtype = compute_dtype(base)
            generator = torch.Generator(device="cpu").manual_seed(derived_seed(seed, index, key))
            vector = state[key].to(device=base.device, dtype=dtype) - base.to(dtype)
            return base.to(dtype) + drop_and_rescale(vector, drop, generator, rescale)
        views.append(DerivedStateDict(list(pretrained.keys()), compute))
    return views


@register("dare", base_param="base", params={
    "drop": Param("float", 0, 1, high_open=True, help="p, the drop probability, in [0, 1)"),
    "base": Param("str", help="the method run on the dropped task vectors (task_arithmetic, ties, ...)"),
    "seed": Param("int", help="seed of the drop masks"),
    "generator": Param("any", optional=True, help="a torch.Generator the seed is drawn from"),
    "rescale": Param("bool", help="multiply survivors by 1/(1-p)"),
})
def dare(pretrained: StateDict, finetuned: Sequence[StateDict], *, drop: float = 0.9,
         base: str = "task_arithmetic", seed: int = 0, generator: torch.Generator | None = None,
         rescale: bool = True, **base_hparams: Any) -> MergedState:
    """DARE: Bernoulli(p) drop + 1/(1−p) rescale of every τ_i, then the `base` method.

    Extra keyword arguments go to the base method (e.g. scale=0.3 for task_arithmetic).
    With `generator`, the seed is drawn from it; otherwise `seed` is used. p=0 is a no-op.
    """
    if base in ("dare", "greedy_soup"):
        raise MergeError(f"dare: base={base!r} is not supported; use task_arithmetic, ties, average, rhm, ...")
    if generator is not None:
        seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
    views = dropped_models(pretrained, finetuned, drop, seed, rescale)
    result = run_unchecked(base, pretrained, views, **base_hparams)
    result.info = {"drop": drop, "seed": seed, "base": base, "base_info": result.info}
    return result
