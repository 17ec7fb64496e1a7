"""Parameters (M) and FLOPs (G) of a merged model, counted the same way for every row.

Conventions (stated in BENCHMARKS.md next to the tables):
- FLOPs are multiply-accumulates of the convolutions and linear layers for one input
  (what fvcore/thop report as "FLOPs", as in most merging papers); norms, activations and
  pooling are not counted.
- A gated model's FLOPs = one encoder forward + the gate's own part (its layers after the
  shared frozen prefix, and its linear layer) + mixing the gated weights for the input
  (N multiply-adds per gated tensor element, Σ_i p_i W_i) + one head.
- Parameters = the merged encoder (gated modules count N copies) + the gate's own trained
  part (its prefix is θ0's, shared with the encoder) + every distinct head that is stored.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from dgmerge.gating.gated_model import GatedClassifier, MixtureModule


def count_params(tensors: Iterable[torch.Tensor]) -> int:
    """Number of elements over `tensors`."""
    return sum(int(t.numel()) for t in tensors)


@torch.no_grad()
def count_macs(module: nn.Module, example: torch.Tensor, within: Iterable[str] | None = None) -> int:
    """Multiply-accumulates of `module`'s Conv2d and Linear layers for one input like example[0:1].

    Conv: out elements × (in channels / groups) × kernel area; Linear: out elements × in
    features. With `within`, only layers under those module names (relative to `module`).
    """
    prefixes = None if within is None else tuple(within)
    total = 0

    def chosen(name: str) -> bool:
        return prefixes is None or any(name == p or name.startswith(p + ".") for p in prefixes)

    def conv_hook(mod: nn.Conv2d, _args: tuple, out: torch.Tensor) -> None:
        nonlocal total
        kh, kw = mod.kernel_size
        total += int(out[0].numel()) * (mod.in_channels // mod.groups) * kh * kw

    def linear_hook(mod: nn.Linear, _args: tuple, out: torch.Tensor) -> None:
        nonlocal total
        total += int(out[0].numel()) * mod.in_features

    handles = []
    for name, sub in module.named_modules():
        if not chosen(name):
            continue
        if isinstance(sub, nn.Conv2d):
            handles.append(sub.register_forward_hook(conv_hook))
        elif isinstance(sub, nn.Linear):
            handles.append(sub.register_forward_hook(linear_hook))
    was_training = module.training
    module.eval()
    try:
        module(example[:1])
    finally:
        for handle in handles:
            handle.remove()
        module.train(was_training)
    return total


def _distinct(heads: Iterable[nn.Module]) -> list[nn.Module]:
    out: list[nn.Module] = []
    for head in heads:
        state = head.state_dict()
        same = any(state.keys() == o.state_dict().keys()
                   and all(torch.equal(v, o.state_dict()[k]) for k, v in state.items()) for o in out)
        if not same:
            out.append(head)
    return out


def model_cost(model: GatedClassifier, plain_encoder: nn.Module, image: torch.Tensor, gate_suffix: Iterable[str],
               *, with_gate: bool = True) -> dict[str, float]:
    """{"params": count, "flops": MACs per input} of `model` under the module docstring's rules.

    `plain_encoder` is θ0's encoder (same architecture, no mixtures) to count the encoder
    forward on `image`; `gate_suffix` names the gate encoder's modules after the shared
    prefix (all of them when the gate has no cut). with_gate=False counts the model as a
    plain merge (no gate, no mixing): the AvgMean/RegMean/Task Arithmetic rows with a
    manually chosen head.
    """
    gate_suffix = list(gate_suffix)
    mixtures = [m for m in model.encoder.modules() if isinstance(m, MixtureModule)]
    mixed = sum(count_params(m.experts.values()) for m in mixtures)  # weights and BN statistics, mixed per input
    param_names = [(m, {n for n, _ in m.template.named_parameters()}) for m in mixtures]
    mixed_params = sum(count_params(m.experts[n.replace(".", "__")] for n in names) for m, names in param_names)
    shared = count_params(p for n, p in model.encoder.named_parameters() if ".experts." not in f".{n}")
    heads = _distinct(model.heads)
    head_params = count_params(t for h in heads for t in h.parameters())
    head = model.heads[0]
    feats = plain_encoder.eval()(image[:1])
    flops = count_macs(plain_encoder, image) + count_macs(head, feats)
    params = shared + mixed_params + (head_params if with_gate else count_params(head.parameters()))
    if with_gate:
        gate = model.gate
        own = [p for n, p in gate.encoder.named_parameters() if any(n.startswith(s + ".") for s in gate_suffix)]
        params += count_params(own) + count_params(gate.linear.parameters())
        flops += count_macs(gate.encoder, image, within=gate_suffix) + gate.linear.in_features * gate.linear.out_features
        flops += mixed  # Σ_i p_i W_i: one multiply-add per expert element, per input
    return {"params": params, "flops": flops}
