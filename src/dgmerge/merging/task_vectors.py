"""Shared building blocks: task vectors, sign election, disjoint and masked means, lazy views.

Merge methods compose these tensor by tensor instead of re-writing them, and never hold more
than one tensor's worth of task vectors (N × that tensor) at a time.

A merge runs on the device of θ0's tensors: every tensor it creates is created there (never on
the default device), and fine-tuned tensors or statistics held elsewhere are brought there.
"""

from __future__ import annotations

import contextlib
import re
from typing import Callable, Iterator, Mapping, Sequence

import torch
from torch import Tensor

from dgmerge.merging.registry import MergedState
from dgmerge.merging.validate import StateDict, is_float

# Transformer block index in the usual naming schemes: open_clip `resblocks.3.`, timm `blocks.3.`,
# HF `layer.3.` / `layers.3.`.
_BLOCK = re.compile(r"(?:^|\.)(resblocks|blocks|layers?|stages?)\.(\d+)\.")


def compute_dtype(tensor: Tensor) -> torch.dtype:
    """float64 stays float64; half and bfloat16 are merged in float32 to avoid rounding drift."""
    return torch.float64 if tensor.dtype == torch.float64 else torch.float32


def float_keys(state: StateDict) -> list[str]:
    """Keys of the tensors that merge methods combine (floating point), in state order."""
    return [k for k, t in state.items() if is_float(t)]


def task_vector(pretrained: StateDict, finetuned: StateDict) -> dict[str, Tensor]:
    """τ = θ_ft − θ0 for every float tensor, in the compute dtype (materialises one model)."""
    return {k: finetuned[k].to(device=t.device, dtype=compute_dtype(t)) - t.to(compute_dtype(t))
            for k, t in pretrained.items() if is_float(t)}


def stacked_task_vectors(pretrained: StateDict, finetuned: Sequence[StateDict], key: str) -> Tensor:
    """[N, *shape] task vectors of one tensor across the N fine-tuned models."""
    base = pretrained[key]
    dtype = compute_dtype(base)
    base = base.to(dtype)
    out = torch.empty((len(finetuned), *base.shape), dtype=dtype, device=base.device)
    for i, state in enumerate(finetuned):
        torch.sub(state[key].to(device=base.device, dtype=dtype), base, out=out[i])
    return out


# Entries per model in one piece: ~1 MiB float32 rows keep a piece's temporaries in cache and
# make peak memory independent of the largest tensor.
PIECE = 1 << 18


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run element-wise piece loops on one intra-op thread.

    Pieces are small, so a second thread gains little; on shared cores it costs a lot: with
    the other core busy, OpenMP workers spin at every op's barrier (RHM on 5 ViT-B/16 models:
    55 s with 2 threads, 5 s with 1, at load average 4 on 2 cores).
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _flat(tensor: Tensor) -> Tensor:
    return tensor.reshape(-1) if tensor.is_contiguous() else tensor.contiguous().reshape(-1)


def task_vector_pieces(pretrained: StateDict, finetuned: Sequence[StateDict], keys: Sequence[str],
                       piece: int | None = None) -> Iterator[tuple[str, slice, Tensor]]:
    """(key, slice of the flattened tensor, [N, len] task vectors) for every piece of every key.

    Each yielded tensor is freshly computed, so callers may modify it in place. All pieces
    of a key come before the next key (lazy views rely on this to cache one tensor).
    """
    piece = piece or PIECE
    for key in keys:
        base_full = pretrained[key]
        dtype = compute_dtype(base_full)
        base = _flat(base_full)
        models = [_flat(state[key]) for state in finetuned]
        total = base.numel()
        for start in range(0, total, piece):
            part = slice(start, min(total, start + piece))
            base_part = base[part].to(dtype)
            out = torch.empty((len(models), part.stop - part.start), dtype=dtype, device=base.device)
            for i, model in enumerate(models):
                torch.sub(model[part].to(device=base.device, dtype=dtype), base_part, out=out[i])
            yield key, part, out


def merge_pieces(pretrained: StateDict, finetuned: Sequence[StateDict],
                 combine: Callable[[str, slice, Tensor], Tensor], scale: float = 1.0,
                 info: dict | None = None) -> MergedState:
    """θ0 + scale · combine(key, part, [N, len] task vectors) for every float key, piece by piece.

    `part` is the piece's slice of the flattened tensor. The result of a piece must not
    depend on how tensors are cut into pieces (tests check this with tiny pieces).

    `combine` returns the merged task vector of the piece ([len]); it may modify its input.
    Non-float tensors are copied from θ0; results are cast back to θ0's dtypes.
    """
    keys = float_keys(pretrained)
    outputs: dict[str, Tensor] = {}
    current: tuple[str, Tensor] | None = None
    with one_thread():
        for key, part, vectors in task_vector_pieces(pretrained, finetuned, keys):
            if current is None or current[0] != key:
                current = (key, torch.empty(pretrained[key].numel(), dtype=vectors.dtype, device=vectors.device))
                outputs[key] = current[1]
            base = _flat(pretrained[key])[part].to(vectors.dtype)
            torch.add(base, combine(key, part, vectors), alpha=scale, out=current[1][part])
    out = MergedState(info=info)
    for key, base in pretrained.items():
        if is_float(base):
            out[key] = outputs[key].view(base.shape).to(base.dtype)
        else:
            out[key] = base.clone()
    return out


def map_float_tensors(pretrained: StateDict, merged_tensor: Callable[[str], Tensor],
                      info: dict | None = None) -> MergedState:
    """Build a merged state: `merged_tensor(key)` for float keys, θ0's value for the rest.

    The result is cast back to θ0's dtype per key; integer buffers are copied from θ0.
    """
    out = MergedState(info=info)
    for key, base in pretrained.items():
        if is_float(base):
            out[key] = merged_tensor(key).to(base.dtype)
        else:
            out[key] = base.clone()
    return out


def add_to_base(base: Tensor, delta: Tensor, scale: float = 1.0) -> Tensor:
    """θ0 + scale · delta in the compute dtype."""
    result = base.to(delta.dtype).clone()
    return result.add_(delta, alpha=scale)


def elect_sign(stacked: Tensor, majority: float | None = None) -> Tensor:
    """TIES sign election by mass: sign of Σ_i v_i per entry.

    Entries whose sum is exactly zero take the `majority` sign; by default the sign of the
    sum of the elected signs of `stacked` itself, as the TIES reference code does over the
    whole flattened model; +1 if that is zero too.
    """
    sign = torch.sign(stacked.sum(dim=0))
    if majority is None:
        majority = float(torch.sign(sign.sum()))
    sign[sign == 0] = majority if majority != 0 else 1.0
    return sign


def disjoint_aggregate(stacked: Tensor, sign: Tensor, how: str = "mean") -> Tensor:
    """Combine only the entries that agree with the elected sign (zeros never count).

    how="mean" divides by the number of agreeing models per entry (TIES' disjoint mean);
    how="sum" returns their plain sum.
    """
    agree = (stacked * sign) > 0
    total = torch.where(agree, stacked, torch.zeros((), dtype=stacked.dtype, device=stacked.device)).sum(dim=0)
    if how == "sum":
        return total
    count = agree.sum(dim=0).clamp_(min=1)
    return total / count


def masked_mean(stacked: Tensor, mask: Tensor) -> Tensor:
    """Σ_i m_i v_i / Σ_i m_i where Σ_i m_i > 0, else 0 (HAM Eq. 13, no sign election)."""
    count = mask.sum(dim=0, dtype=stacked.dtype)
    total = (stacked * mask).sum(dim=0)
    return total.div_(count.clamp_(min=1))  # where no model survives, total is already 0


def block_of(key: str) -> str | None:
    """The transformer block a key belongs to (e.g. "visual.transformer.resblocks.3"), or None."""
    match = None
    for match in _BLOCK.finditer(key):
        pass
    if match is None:
        return None
    return key[: match.end() - 1]


def layer_units(keys: Sequence[str], unit: str) -> dict[str, list[str]]:
    """Group keys into layer units: "tensor" = each key alone, "block" = per transformer block.

    Keys outside any block (embeddings, final norm, projection) stay units of their own.
    """
    if unit == "tensor":
        return {k: [k] for k in keys}
    units: dict[str, list[str]] = {}
    for key in keys:
        units.setdefault(block_of(key) or key, []).append(key)
    return units


class DerivedStateDict(Mapping[str, Tensor]):
    """A read-only state dict whose tensors are computed on access (never all held at once).

    Used to put a per-tensor transformation (DARE drop, LwPTV-style mask) in front of
    another method without materialising N modified copies of the model.
    """

    def __init__(self, keys: Sequence[str], compute: Callable[[str], Tensor]) -> None:
        self._keys = list(keys)
        self._set = set(self._keys)
        self._compute = compute
        # Piecewise readers ask for the same key many times in a row; keep the last one.
        self._last: tuple[str, Tensor] | None = None

    def __getitem__(self, key: str) -> Tensor:
        if key not in self._set:
            raise KeyError(key)
        if self._last is None or self._last[0] != key:
            self._last = (key, self._compute(key))
        return self._last[1]

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)
