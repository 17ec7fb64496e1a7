"""The controllable combined merge: gate the m least-similar modules, merge the rest.

Ye et al. pick the m attention and m MLP modules of a ViT with the lowest weight similarity
(Eq. 4). A CNN has no attention/MLP split, so the analogous units are its blocks: for
MobileNetV2 each inverted-residual block (expand 1×1 conv, depthwise 3×3, project 1×1, with
their norms) is one module, and the tail (conv_head + bn2) one more; m modules are gated in
total. Norm layers of the trained blocks are gated too (the paper gates all norms and
embeddings; here the embedding is frozen, identical in every expert). Everything else that
trained is merged by AvgMean, Task Arithmetic or RegMean (merging/regmean.py, 1×1 convolutions
in closed form); frozen tensors stay θ0's.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from typing import Any

from torch import Tensor, nn

from dgmerge.config.gating import GATING_BASES
from dgmerge.gating.gated_model import GatedClassifier, install_mixtures
from dgmerge.merging.scope import merge_subset
from dgmerge.merging.similarity import pairwise_cosine_sum
from dgmerge.models.classifier import NORM_TYPES
from dgmerge.models.stages import Cut

StateDict = dict[str, Tensor]
BASES = GATING_BASES
TAIL = "tail"


def candidate_modules(encoder: nn.Module, blocks: Sequence[str], tail: Sequence[str],
                      trained: Iterable[str]) -> dict[str, list[str]]:
    """Gating candidates -> the encoder modules they consist of, for the blocks that trained.

    A stage whose children are themselves blocks (MobileNetV2's blocks.5 = three inverted
    residuals) yields one candidate per child; a stage of plain layers (tiny_cnn's
    conv-BN-ReLU) is one candidate; the tail modules together are one candidate, "tail".
    `trained` are encoder-relative parameter names.
    """
    trained = set(trained)

    def has_trained(prefix: str) -> bool:
        return any(n == prefix or n.startswith(prefix + ".") for n in trained)

    out: dict[str, list[str]] = {}
    for stage in blocks:
        if not has_trained(stage):
            continue
        children = list(encoder.get_submodule(stage).named_children())
        nested = [name for name, child in children if any(True for _ in child.children())]
        if nested and len(nested) == len([c for c in children if any(True for _ in c[1].parameters())]):
            for name in nested:
                if has_trained(f"{stage}.{name}"):
                    out[f"{stage}.{name}"] = [f"{stage}.{name}"]
        else:
            out[stage] = [stage]
    tail_trained = [t for t in tail if has_trained(t)]
    if tail_trained:
        out[TAIL] = tail_trained
    return out


def module_keys(state: StateDict, modules: Sequence[str], prefix: str = "encoder.") -> list[str]:
    """State-dict keys (with `prefix`) of the float tensors inside `modules`."""
    heads = tuple(f"{prefix}{m}." for m in modules)
    return [k for k, v in state.items() if k.startswith(heads) and v.is_floating_point()]


def candidate_similarities(experts: Sequence[StateDict], candidates: dict[str, list[str]],
                           pretrained: StateDict | None = None) -> dict[str, float]:
    """Eq. 4 for every candidate: Σ_{i<j} cos over its weight tensors (≥ 2-D) concatenated.

    Like the paper, raw weights by default; with `pretrained`, task vectors θ_i − θ0.
    """
    if len(experts) < 2:
        raise ValueError("weight similarity needs at least two experts")
    sims = {}
    for name, modules in candidates.items():
        keys = [k for k in module_keys(experts[0], modules) if experts[0][k].dim() >= 2]
        keys = keys or module_keys(experts[0], modules)
        vectors = [[e[k].double() - (pretrained[k].double() if pretrained is not None else 0) for k in keys]
                   for e in experts]
        sims[name] = pairwise_cosine_sum(vectors)
    return sims


def least_similar(similarities: dict[str, float], m: int) -> list[str]:
    """The m candidates with the lowest similarity (ties by name, so the choice is deterministic)."""
    if m < 0 or m > len(similarities):
        raise ValueError(f"m={m} must be between 0 and the {len(similarities)} candidate modules "
                         f"({', '.join(similarities)})")
    return sorted(similarities, key=lambda n: (similarities[n], n))[:m]


def gated_module_names(encoder: nn.Module, candidates: dict[str, list[str]], chosen: Sequence[str],
                       trained: Iterable[str], gate_norms: bool) -> list[str]:
    """Encoder modules to gate: the chosen candidates' modules, plus (gate_norms) every trained norm outside them."""
    names = [mod for c in chosen for mod in candidates[c]]
    if gate_norms and chosen:
        trained = set(trained)
        for name, module in encoder.named_modules():
            inside = any(name == n or name.startswith(n + ".") for n in names)
            if (isinstance(module, NORM_TYPES) and not inside
                    and any(f"{name}.{p}" in trained for p, _ in module.named_parameters(recurse=False))):
                names.append(name)
    return names


def base_merge(method: str, pretrained: StateDict, experts: Sequence[StateDict], keys: Sequence[str],
               *, grams: Sequence[StateDict] | None = None, scale: float = 0.5, alpha: float = 0.9) -> StateDict:
    """θ0 with `keys` merged by AvgMean, Task Arithmetic (λ = scale) or RegMean; the rest stays θ0's."""
    if method not in BASES:
        raise ValueError(f"base merge {method!r}; use one of {BASES}")
    hparams: dict[str, Any] = {}
    if method == "regmean":
        if grams is None:
            raise ValueError("base merge regmean needs Gram matrices (collect_gram(..., conv1x1=True) per expert)")
        # RegMean's closed form for the 1×1 convs and linears that have Grams, the mean elsewhere;
        # a model without such layers (only k×k convs) has no closed form anywhere: the mean.
        subset = [{k: g[k] for k in keys if k in g} for g in grams]
        if not any(subset):
            return dict(merge_subset("average", pretrained, list(experts), list(keys)))
        hparams = {"grams": subset, "alpha": alpha, "conv1x1": "matrix"}
    elif method == "task_arithmetic":
        hparams = {"scale": scale}
    return dict(merge_subset(method, pretrained, list(experts), list(keys), **hparams))


def build_gated(template: nn.Module, merged_state: StateDict, expert_states: Sequence[StateDict],
                gated: Sequence[str], gate: nn.Module, heads: Sequence[nn.Module],
                task_classes: Sequence[Sequence[str]], *, cut: Cut | None, mode: str = "sample",
                inputs: str = "images") -> GatedClassifier:
    """A GatedClassifier: `template` (θ0's encoder) loaded with the merged state, `gated` modules mixed.

    States are encoder state dicts prefixed "encoder." (as in a Classifier's state dict).
    """
    def encoder_with(state: StateDict) -> nn.Module:
        encoder = copy.deepcopy(template)
        own = {k.removeprefix("encoder."): v for k, v in state.items() if k.startswith("encoder.")}
        encoder.load_state_dict(own)
        return encoder

    encoder = encoder_with(merged_state)
    if gated:
        install_mixtures(encoder, [encoder_with(s) for s in expert_states], gated)
    return GatedClassifier(encoder, gate, heads, task_classes, cut=cut, mode=mode, inputs=inputs)
