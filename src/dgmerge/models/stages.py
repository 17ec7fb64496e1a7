"""Split an encoder at a block: run the frozen prefix once, the trainable suffix many times.

When only the last blocks train (and there is no augmentation), everything before the
first trainable block computes the same activations for an image at every step. Caching
those activations turns a CPU fine-tuning run from hours into minutes.

The split is generic, through hooks on the cut block rather than per-architecture code:
- capture: a forward pre-hook on the block raises with its input, ending the forward there.
- run from: a pre-hook replaces the block's input with the cached activations; the prefix
  runs on a single dummy image only, so its cost is one image per batch.
This relies on the block's input being the only thing that flows past the cut, true for
the sequential stages of CNNs and for transformer blocks.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class Cut:
    """Where cached activations enter an encoder: the input of block `block`."""

    block: str
    image_size: int


class _Captured(Exception):
    def __init__(self, value: torch.Tensor):
        super().__init__("captured")
        self.value = value


def first_trainable_block(encoder: nn.Module, blocks: list[str], trainable: set[str]) -> str | None:
    """The earliest block holding a parameter of `trainable`, if everything before it is frozen.

    Returns None when a parameter registered before that block trains (the prefix would not
    be constant, so caching it would be wrong) or when nothing trains.
    """
    if not trainable:
        return None
    order = [name for name, _ in encoder.named_parameters()]
    for block in blocks:
        inside = [i for i, n in enumerate(order) if n.startswith(block + ".")]
        if inside and any(order[i] in trainable for i in inside):
            # Parameters are registered in forward order for sequential encoders: nothing
            # registered before this block may train, or the cached prefix would go stale.
            first_trainable = min(order.index(n) for n in trainable)
            return block if first_trainable >= inside[0] else None
    return None


@torch.no_grad()
def capture(encoder: nn.Module, cut: Cut, images: torch.Tensor) -> torch.Tensor:
    """Activations entering `cut.block` for a batch of images (the frozen prefix's output)."""
    block = encoder.get_submodule(cut.block)

    def stop(_module: nn.Module, args: tuple) -> None:
        raise _Captured(args[0])

    handle = block.register_forward_pre_hook(stop)
    try:
        encoder(images)
    except _Captured as captured:
        return captured.value
    finally:
        handle.remove()
    raise RuntimeError(f"block {cut.block} was never called during the encoder's forward pass")


def run_from(encoder: nn.Module, cut: Cut, activations: torch.Tensor) -> torch.Tensor:
    """Encoder features computed from cached activations at `cut` (the suffix forward)."""
    block = encoder.get_submodule(cut.block)

    def inject(_module: nn.Module, args: tuple) -> tuple:
        return (activations, *args[1:])

    handle = block.register_forward_pre_hook(inject)
    try:
        # Only the frozen prefix sees the dummy image; the hook discards what it computes. A
        # small dummy saves that work (at 224 px it costs as much as ~20 images through the
        # suffix); networks that need their own input size (a ViT's position embedding) get it.
        sizes = _dummy_sizes.setdefault(encoder, {})
        size = sizes.get(cut.block, min(SMALL_DUMMY, cut.image_size))
        dummy = torch.zeros(1, 3, size, size, dtype=activations.dtype, device=activations.device)
        try:
            out = encoder(dummy)
        except Exception:
            if size == cut.image_size:
                raise
            size = cut.image_size
            dummy = torch.zeros(1, 3, size, size, dtype=activations.dtype, device=activations.device)
            out = encoder(dummy)
        sizes[cut.block] = size
        return out
    finally:
        handle.remove()


# Side of run_from's first-choice dummy image, and the size that worked per encoder and cut.
SMALL_DUMMY = 32
_dummy_sizes: "weakref.WeakKeyDictionary[nn.Module, dict[str, int]]" = weakref.WeakKeyDictionary()


class StageEncoder(nn.Module):
    """`encoder` seen from the cut: maps cached activations to features (for feature extraction)."""

    def __init__(self, encoder: nn.Module, cut: Cut):
        super().__init__()
        self.encoder = encoder
        self.cut = cut

    def forward(self, activations: torch.Tensor) -> torch.Tensor:
        return run_from(self.encoder, self.cut, activations)
