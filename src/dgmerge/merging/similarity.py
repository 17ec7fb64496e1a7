"""Weight similarity of Ye et al. (Eq. 4) and the selection of the least similar modules.

Sim(l) = Σ_{i<j} cos(W_i^l, W_j^l) over the N models' weights of module l. Following the
paper's best strategy (Table 9) a block's attention weights are concatenated into one vector
("concat-layers") and both MLP matrices form one module ("combined-FFN"); the "separate"
options sum per-tensor similarities / split the MLP instead. The m attention and m MLP
modules with the LOWEST similarity are the ones a gating merge should handle.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from dgmerge.merging.task_vectors import block_of
from dgmerge.merging.validate import MergeError, StateDict, is_float

_ATTENTION = ("attn", "attention", "self_attn")
_MLP = ("mlp", "ffn", "feed_forward", "intermediate", "fc1", "fc2", "c_fc", "c_proj")


@dataclass
class ModuleSimilarity:
    """One attention or MLP module of one block, its tensors and its Eq. 4 similarity."""

    name: str
    kind: str
    block: str
    keys: list[str]
    similarity: float


def module_kind(key: str) -> str | None:
    """"attention", "mlp" or None for a key inside a transformer block."""
    block = block_of(key)
    if block is None:
        return None
    rest = key[len(block) + 1:]
    parts = rest.split(".")
    if any(p in _ATTENTION for p in parts):
        return "attention"
    if any(p in _MLP for p in parts) or rest.startswith("output.dense"):
        return "mlp"
    return None


def module_groups(state: StateDict, *, mlp: str = "combined",
                  include_bias: bool = False) -> dict[tuple[str, str, str], list[str]]:
    """(block, kind, module name) -> keys. Matrices only unless include_bias."""
    groups: dict[tuple[str, str, str], list[str]] = {}
    for key, tensor in state.items():
        if not is_float(tensor) or (tensor.dim() < 2 and not include_bias):
            continue
        kind = module_kind(key)
        if kind is None:
            continue
        block = block_of(key) or ""
        if kind == "mlp" and mlp == "separate":
            name = key.rsplit(".", 1)[0]
        else:
            name = f"{block}.{kind}"
        groups.setdefault((block, kind, name), []).append(key)
    return groups


def pairwise_cosine_sum(vectors: Sequence[Sequence[Tensor]]) -> float:
    """Σ_{i<j} cos(concat_k x_i^k, concat_k x_j^k) for N models' lists of tensors.

    Computed on the device of the first model's first tensor; the others are brought there.
    """
    n_models = len(vectors)
    device = vectors[0][0].device if n_models and len(vectors[0]) else torch.device("cpu")
    gram = torch.zeros(n_models, n_models, dtype=torch.float64, device=device)
    for parts in zip(*vectors):
        flat = torch.stack([p.reshape(-1).to(device=device, dtype=torch.float64) for p in parts])
        gram += flat @ flat.T
    norms = gram.diagonal().sqrt()
    total = 0.0
    for i in range(n_models):
        for j in range(i + 1, n_models):
            denom = float(norms[i] * norms[j])
            total += float(gram[i, j]) / denom if denom > 0 else 0.0
    return total


def module_similarities(models: Sequence[StateDict], *, attention: str = "concat", mlp: str = "combined",
                        pretrained: StateDict | None = None,
                        include_bias: bool = False) -> list[ModuleSimilarity]:
    """Eq. 4 similarity of every attention and MLP module across `models` (N ≥ 2).

    attention="concat" concatenates a block's attention tensors, "separate" sums their
    individual similarities (the same choice applies inside a combined MLP). With
    `pretrained`, task vectors θ_i − θ0 are compared instead of raw weights.
    """
    if len(models) < 2:
        raise MergeError("weight similarity needs at least two models")
    out = []
    for (block, kind, name), keys in module_groups(models[0], mlp=mlp, include_bias=include_bias).items():
        def tensors(key: str) -> list[Tensor]:
            if pretrained is None:
                return [m[key] for m in models]
            return [m[key].to(device=pretrained[key].device, dtype=torch.float64) - pretrained[key].double()
                    for m in models]
        if attention == "separate":
            value = sum(pairwise_cosine_sum([[t] for t in tensors(k)]) for k in keys)
        else:
            per_key = [tensors(k) for k in keys]
            value = pairwise_cosine_sum([[per_key[j][i] for j in range(len(keys))] for i in range(len(models))])
        out.append(ModuleSimilarity(name, kind, block, keys, value))
    return out


def least_similar_modules(models: Sequence[StateDict], m: int, **options) -> dict[str, list[ModuleSimilarity]]:
    """The m attention and m MLP modules with the lowest similarity (ascending)."""
    if m < 0:
        raise MergeError(f"m={m} must be ≥ 0")
    sims = module_similarities(models, **options)
    return {kind: sorted((s for s in sims if s.kind == kind), key=lambda s: s.similarity)[:m]
            for kind in ("attention", "mlp")}
