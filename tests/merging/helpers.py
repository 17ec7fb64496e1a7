"""Small state dicts for hand-computed merge tests."""

from __future__ import annotations

import torch
from torch import Tensor


def t(*values, dtype=torch.float64) -> Tensor:
    """A float64 tensor from literal values (hand examples stay exact)."""
    return torch.tensor(values if len(values) != 1 or not isinstance(values[0], list) else values[0], dtype=dtype)


def vit_like(seed: int = 0, width: int = 8, depth: int = 2, dtype=torch.float32) -> dict[str, Tensor]:
    """A tiny timm-named ViT state dict with an integer buffer, for invariants and CLI tests."""
    gen = torch.Generator().manual_seed(seed)
    shapes = {"cls_token": (1, 1, width), "pos_embed": (1, 5, width),
              "patch_embed.proj.weight": (width, 3, 2, 2), "patch_embed.proj.bias": (width,)}
    for b in range(depth):
        p = f"blocks.{b}."
        shapes.update({p + "norm1.weight": (width,), p + "attn.qkv.weight": (3 * width, width),
                       p + "attn.qkv.bias": (3 * width,), p + "attn.proj.weight": (width, width),
                       p + "mlp.fc1.weight": (2 * width, width), p + "mlp.fc2.weight": (width, 2 * width)})
    state = {k: torch.randn(s, generator=gen).to(dtype) for k, s in shapes.items()}
    state["bn.num_batches_tracked"] = torch.tensor(7)
    return state


def finetune(base: dict[str, Tensor], seed: int, size: float = 0.1) -> dict[str, Tensor]:
    """θ0 + small random updates on float tensors; integer buffers changed so carry-over shows."""
    gen = torch.Generator().manual_seed(1000 + seed)
    out = {}
    for k, v in base.items():
        if v.is_floating_point():
            out[k] = v + size * torch.randn(v.shape, generator=gen).to(v.dtype)
        else:
            out[k] = v + 100 + seed
    return out
