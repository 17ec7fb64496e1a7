"""A merged classifier whose gated modules mix N experts' weights per input (Ye et al., Alg. 1).

P(x) = softmax(G(x)) over the N experts. A gated module computes with W = Σ_i p_i W_i:
per sample (every input its own weights, batched with torch.func.vmap) or per batch (one
weight set from the batch's mean P, for a batch known to come from one task). Everything
else is one merged weight set. The classifier is selected, not merged: head argmax P(x),
or a head chosen by hand ("manual classifier" rows).

Heads may have different label spaces. Outputs live in the union of the tasks' class
names (in task order, duplicates once); a sample's logits are its selected head's,
scattered into that space, with -inf elsewhere, so argmax is a class name.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap

from dgmerge.config.gating import GATING_MODES
from dgmerge.models.stages import Cut, capture, run_from

MODES = GATING_MODES


def _slot(name: str) -> str:
    # Parameter names may not contain dots; "__" cannot occur in torch state names.
    return name.replace(".", "__")


def mixable_tensors(module: nn.Module) -> dict[str, Tensor]:
    """The float parameters and buffers of `module` (what gating mixes), by local name."""
    tensors = dict(module.named_parameters())
    tensors.update({n: b for n, b in module.named_buffers() if b.is_floating_point()})
    return tensors


class MixtureModule(nn.Module):
    """`template`'s computation with each float tensor replaced by Σ_i p_i W_i.

    The experts' tensors are stored stacked (N, ...) as `experts.<name with __>`; the
    template only supplies the structure (it is not a registered sub-module, so it is not
    saved). `probs` is set by the owning GatedClassifier before each forward.
    """

    def __init__(self, template: nn.Module, expert_tensors: Sequence[dict[str, Tensor]]):
        super().__init__()
        if not expert_tensors:
            raise ValueError("MixtureModule needs at least one expert")
        names = sorted(mixable_tensors(template))
        for i, tensors in enumerate(expert_tensors):
            if sorted(tensors) != names:
                raise ValueError(f"expert {i} has tensors {sorted(tensors)[:4]}…, the module needs {names[:4]}…")
        self.__dict__["template"] = template.eval()
        self.names = names
        self.experts = nn.ParameterDict({
            _slot(n): nn.Parameter(torch.stack([t[n].detach() for t in expert_tensors]), requires_grad=False)
            for n in names})
        self.probs: Tensor | None = None

    @property
    def n_experts(self) -> int:
        return int(next(iter(self.experts.values())).shape[0])

    def mixed(self, probs: Tensor) -> dict[str, Tensor]:
        """{name: Σ_i p_i W_i}; probs (N,) gives one weight set, (B, N) one per sample."""
        out = {}
        for name in self.names:
            stacked = self.experts[_slot(name)]
            flat = probs.to(stacked.dtype) @ stacked.reshape(stacked.shape[0], -1)
            out[name] = flat.reshape(*probs.shape[:-1], *stacked.shape[1:])
        return out

    def forward(self, x: Tensor) -> Tensor:
        if self.probs is None:
            raise RuntimeError("MixtureModule called without gate probabilities; run it through GatedClassifier")
        weights = self.mixed(self.probs)
        if self.probs.dim() == 1:
            return functional_call(self.template, weights, (x,))
        if self.probs.shape[0] != x.shape[0]:
            raise ValueError(f"{self.probs.shape[0]} gate rows for a batch of {x.shape[0]}")

        def one(w: dict[str, Tensor], xi: Tensor) -> Tensor:
            return functional_call(self.template, w, (xi.unsqueeze(0),)).squeeze(0)

        return vmap(one)(weights, x)


class GatedClassifier(nn.Module):
    """encoder (merged, with MixtureModules in place of gated modules) + gate + N heads.

    With `cut` set the encoder's frozen prefix runs once per input; the gate (which shares
    that prefix, θ0's) and the encoder's suffix both start from its output. `inputs` says
    what forward receives: "images" or cached "activations" at the cut.
    """

    def __init__(self, encoder: nn.Module, gate: nn.Module, heads: Sequence[nn.Module],
                 task_classes: Sequence[Sequence[str]], *, cut: Cut | None = None, mode: str = "sample",
                 inputs: str = "images"):
        super().__init__()
        if len(heads) != len(task_classes):
            raise ValueError(f"{len(heads)} heads but {len(task_classes)} class lists; give one per task")
        if mode not in MODES:
            raise ValueError(f"mode={mode!r}; use one of {MODES}")
        if inputs not in ("images", "activations") or (inputs == "activations" and cut is None):
            raise ValueError(f"inputs={inputs!r}: use 'images', or 'activations' together with a cut")
        self.encoder = encoder
        self.gate = gate
        self.heads = nn.ModuleList(heads)
        self.task_classes = [list(c) for c in task_classes]
        self.classes: list[str] = []
        for names in self.task_classes:
            self.classes += [c for c in names if c not in self.classes]
        self._index = [torch.tensor([self.classes.index(c) for c in names]) for names in self.task_classes]
        self.cut = cut
        self.mode = mode
        self.inputs = inputs
        self.head_choice: int | None = None  # None = automatic (argmax P); i = the i-th head by hand

    @property
    def n_experts(self) -> int:
        return len(self.heads)

    def mixtures(self) -> list[MixtureModule]:
        """The gated modules, in encoder order."""
        return [m for m in self.encoder.modules() if isinstance(m, MixtureModule)]

    def prefix(self, inputs: Tensor) -> Tensor:
        """What the gate and the encoder suffix start from: cut activations, or the images."""
        if self.cut is None or self.inputs == "activations":
            return inputs
        return capture(self.encoder, self.cut, inputs)

    def gate_probs(self, inputs: Tensor) -> Tensor:
        """P(x) = softmax(G(x)), (B, N); rows sum to 1."""
        return torch.softmax(self.gate(self.prefix(inputs)), dim=-1)

    def forward(self, inputs: Tensor, probs: Tensor | None = None) -> Tensor:
        """Union-label-space logits; `probs` (B, N) skips the gate (precomputed P(x))."""
        start = self.prefix(inputs)
        if probs is None:
            probs = torch.softmax(self.gate(start), dim=-1)
        feats = self.features(start, probs)
        if self.head_choice is None:
            chosen = probs.argmax(dim=-1)
        else:
            chosen = torch.full((len(feats),), self.head_choice, dtype=torch.long, device=feats.device)
        out = feats.new_full((len(feats), len(self.classes)), float("-inf"))
        for task, head in enumerate(self.heads):
            rows = (chosen == task).nonzero().flatten()
            if len(rows):
                out[rows.unsqueeze(1), self._index[task].to(feats.device).unsqueeze(0)] = head(feats[rows])
        return out

    def features(self, start: Tensor, probs: Tensor) -> Tensor:
        """Encoder features with the gated modules mixed by `probs`."""
        weights = probs.mean(dim=0) if self.mode == "batch" else probs
        mixtures = self.mixtures()
        for module in mixtures:
            module.probs = weights
        try:
            if self.cut is None:
                return self.encoder(start)
            return run_from(self.encoder, self.cut, start)
        finally:
            for module in mixtures:
                module.probs = None


def install_mixtures(encoder: nn.Module, expert_encoders: Sequence[nn.Module], names: Sequence[str]) -> nn.Module:
    """Replace each sub-module `names[k]` of `encoder` (in place) by a MixtureModule over the experts'.

    Names are relative to the encoder; nested names (a block and a norm inside it) are not
    allowed: gate the outer one.
    """
    for a in names:
        for b in names:
            if a != b and b.startswith(a + "."):
                raise ValueError(f"gated modules {a!r} and {b!r} nest; gate only {a!r}")
    for name in names:
        template = encoder.get_submodule(name)
        experts = [mixable_tensors(e.get_submodule(name)) for e in expert_encoders]
        parent_name, _, child = name.rpartition(".")
        parent = encoder.get_submodule(parent_name) if parent_name else encoder
        setattr(parent, child, MixtureModule(template, experts))
    return encoder
