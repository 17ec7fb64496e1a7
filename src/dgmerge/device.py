"""Where training runs and in which precision: device names, autocast and the fp16 loss scaler.

One place resolves `train.device` (auto | cpu | cuda | cuda:N) and `train.precision`
(fp32 | bf16 | fp16), so every loop (fine-tuning, HAM, probes, caches, evaluation, gating)
means the same thing by them. Mixed precision is autocast only: master weights, optimizer
states and running averages stay fp32, which is what makes bf16 runs land near fp32 ones.
"""

from __future__ import annotations

import contextlib
import re
from typing import Any, ContextManager

import torch

DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda|cuda:[0-9]+)$")
PRECISIONS = ("fp32", "bf16", "fp16")
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class DeviceError(ValueError):
    """A device or precision that this machine cannot provide, with what to use instead."""


def resolve_device(spec: str | torch.device = "auto") -> torch.device:
    """The torch.device `spec` names: auto = the first GPU when there is one, else the CPU."""
    if isinstance(spec, torch.device):
        return spec
    if not DEVICE_PATTERN.match(spec):
        raise DeviceError(f"device must be auto, cpu, cuda or cuda:N, got {spec!r}")
    if spec == "auto":
        return torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(spec)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"device {spec!r} asked for a GPU but torch sees none on this machine "
                              "(use --device cpu, or install a CUDA build of torch)")
        index = device.index or 0
        if index >= torch.cuda.device_count():
            raise DeviceError(f"device {spec!r}: this machine has {torch.cuda.device_count()} GPU(s), "
                              f"cuda:0 to cuda:{torch.cuda.device_count() - 1}")
        device = torch.device("cuda", index)
    return device


def check_precision(precision: str, device: torch.device) -> None:
    """Refuse combinations autocast cannot run: fp16 needs a GPU (CPU autocast is bf16 only)."""
    if precision not in PRECISIONS:
        raise DeviceError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "fp16" and device.type != "cuda":
        raise DeviceError("precision fp16 needs a CUDA device; on the CPU use bf16 or fp32")


def autocast(device: torch.device, precision: str) -> ContextManager[Any]:
    """torch.autocast for `precision` on `device`'s type; a no-op context for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    check_precision(precision, device)
    return torch.autocast(device_type=device.type, dtype=AUTOCAST_DTYPES[precision])


def grad_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler:
    """A GradScaler, enabled for fp16 only (bf16 has fp32's range and needs no loss scaling).

    A disabled scaler passes losses and steps through unchanged, so loops call it unconditionally.
    """
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")


def module_device(module: torch.nn.Module) -> torch.device:
    """Where `module`'s parameters live (the CPU for a module without parameters)."""
    return next(module.parameters(), torch.empty(0, device="cpu")).device


def to_device(state: dict[str, torch.Tensor], device: torch.device | str) -> dict[str, torch.Tensor]:
    """A state dict with every tensor on `device` (no copy for tensors already there)."""
    return {k: v.to(device) for k, v in state.items()}


__all__ = ["AUTOCAST_DTYPES", "DEVICE_PATTERN", "DeviceError", "PRECISIONS", "autocast", "check_precision",
           "grad_scaler", "module_device", "resolve_device", "to_device"]
