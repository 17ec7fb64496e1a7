"""Averages along one training trajectory: EMA and HAM's Beta-weighted historical average (Eq. 7).

Both update incrementally (no stored history): call `update(model_or_state)` after each
optimizer step and read the average with `state_dict()`. Float tensors are accumulated in
float32 (float64 stays float64) so long runs in half precision do not drift; integer
buffers follow the latest model.

The accumulators live with the model's tensors by default; `device="cpu"` keeps them on the
CPU instead (e.g. several histories beside models on a small GPU), and each update copies the
model's tensors there.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping

import torch
from torch import Tensor, nn

from dgmerge.merging.task_vectors import compute_dtype
from dgmerge.merging.validate import MergeError, is_float


def _state_of(model_or_state: nn.Module | Mapping[str, Tensor]) -> Mapping[str, Tensor]:
    if isinstance(model_or_state, nn.Module):
        return model_or_state.state_dict()
    return model_or_state


def beta_weight(step: int, total_steps: int, beta: float = 0.5) -> float:
    """γ_t = Beta(β, β).pdf((t + 0.5) / (T + 1)), HAM Eq. 7 / CLIPood's GeneralMovingAverage.

    β = 0.5 is U-shaped (weighs early and late steps), β = 1 uniform, β > 1 bell-shaped.
    """
    if beta <= 0:
        raise MergeError(f"beta={beta} must be > 0")
    x = (step + 0.5) / (total_steps + 1)
    log_norm = math.lgamma(2 * beta) - 2 * math.lgamma(beta)
    return math.exp(log_norm + (beta - 1) * (math.log(x) + math.log1p(-x)))


class _RunningAverage:
    """Shared storage: float accumulators plus the latest non-float buffers.

    device: where the accumulators live; None keeps them with the model's tensors. Every incoming
    tensor is detached first, so an update builds no autograd graph without torch.no_grad.
    """

    def __init__(self, device: str | torch.device | None = None) -> None:
        self.device = torch.device(device) if device is not None else None
        self._avg: dict[str, Tensor] = {}
        self._dtypes: dict[str, torch.dtype] = {}
        self.updates = 0

    def _start(self, state: Mapping[str, Tensor]) -> None:
        for key, tensor in state.items():
            self._dtypes[key] = tensor.dtype
            t = tensor.detach()
            if self.device is None:
                self._avg[key] = t.to(compute_dtype(t), copy=True) if is_float(t) else t.clone()
            else:
                dtype = compute_dtype(t) if is_float(t) else t.dtype
                self._avg[key] = t.to(device=self.device, dtype=dtype, copy=True)

    def _blend(self, state: Mapping[str, Tensor], keep: float, add: float) -> None:
        """avg ← keep·avg + add·θ for floats; latest value for the rest."""
        if set(state.keys()) != set(self._avg.keys()):
            raise MergeError("the model's keys changed between updates of the running average")
        for key, tensor in state.items():
            avg = self._avg[key]
            t = tensor.detach()
            if self.device is None and avg.device != t.device:
                # Restored from a checkpoint loaded elsewhere: rejoin the model's tensors.
                avg = self._avg[key] = avg.to(t.device)
            if is_float(t):
                avg.mul_(keep).add_(t.to(device=avg.device, dtype=avg.dtype), alpha=add)
            else:
                avg.copy_(t)

    def state_dict(self) -> dict[str, Tensor]:
        """The averaged weights in the model's own dtypes, on the storage device (the model's
        by default), ready for `model.load_state_dict`."""
        if not self._avg:
            raise MergeError("the running average has no updates yet; call update(model) first")
        return {k: v.to(self._dtypes[k], copy=True) for k, v in self._avg.items()}

    def export(self) -> dict[str, Any]:
        """Everything needed to resume (tensors and plain values only, safe for weights_only loads)."""
        return {"average": {k: v.clone() for k, v in self._avg.items()},
                "dtypes": {k: str(v).removeprefix("torch.") for k, v in self._dtypes.items()},
                "updates": self.updates, **self._counters()}

    def restore(self, saved: Mapping[str, Any]) -> None:
        """Resume from `export()`; the tensors go to the storage device when one is set (else
        they stay where they were loaded and join the model's tensors at the next update)."""
        if self.device is None:
            self._avg = {k: v.clone() for k, v in saved["average"].items()}
        else:
            self._avg = {k: v.to(device=self.device, copy=True) for k, v in saved["average"].items()}
        self._dtypes = {k: getattr(torch, v) if isinstance(v, str) else v for k, v in saved["dtypes"].items()}
        self.updates = int(saved["updates"])
        self._restore_counters(saved)

    def _counters(self) -> dict[str, Any]:
        return {}

    def _restore_counters(self, saved: Mapping[str, Any]) -> None:
        pass


class EMA(_RunningAverage):
    """Exponential moving average: avg ← d·avg + (1 − d)·θ; the first update copies θ.

    `device`: where the average is kept (None = with the model's tensors).
    """

    def __init__(self, decay: float = 0.999, device: str | torch.device | None = None) -> None:
        super().__init__(device)
        if not 0 <= decay < 1:
            raise MergeError(f"EMA decay={decay} must be in [0, 1)")
        self.decay = decay

    def update(self, model_or_state: nn.Module | Mapping[str, Tensor]) -> None:
        """Fold the current weights into the average."""
        state = _state_of(model_or_state)
        if self.updates == 0:
            self._start(state)
        else:
            self._blend(state, self.decay, 1 - self.decay)
        self.updates += 1


class HistoricalAverage(_RunningAverage):
    """HAM's historical model merge (Eq. 6-7): θ̄ ← (S·θ̄ + γ_t·θ_t) / (S + γ_t), S += γ_t.

    γ_t defaults to `beta_weight(t, total_steps, beta)`; pass `weight_fn(step) -> float` to
    use another schedule (a constant gives the arithmetic mean of all visited weights).
    `update` uses an internal step counter starting at 0 unless `step` is given. `device`: where
    the average is kept (None = with the model's tensors).
    """

    def __init__(self, total_steps: int | None = None, beta: float = 0.5,
                 weight_fn: Callable[[int], float] | None = None,
                 device: str | torch.device | None = None) -> None:
        super().__init__(device)
        if weight_fn is None:
            if total_steps is None or total_steps < 1:
                raise MergeError("HistoricalAverage needs total_steps ≥ 1 (or a weight_fn)")
            if beta <= 0:
                raise MergeError(f"beta={beta} must be > 0")
            weight_fn = lambda t: beta_weight(t, total_steps, beta)  # noqa: E731
        self.weight_fn = weight_fn
        self.total_weight = 0.0
        self.step = 0

    def update(self, model_or_state: nn.Module | Mapping[str, Tensor], step: int | None = None) -> float:
        """Fold θ_t in with weight γ_t; returns γ_t. Zero-weight steps leave the average as is."""
        step = self.step if step is None else step
        weight = float(self.weight_fn(step))
        if not math.isfinite(weight) or weight < 0:
            raise MergeError(f"historical weight γ_{step}={weight} must be finite and ≥ 0")
        state = _state_of(model_or_state)
        if self.updates == 0:
            self._start(state)
        elif weight > 0:
            total = self.total_weight + weight
            self._blend(state, self.total_weight / total if total > 0 else 0.0,
                        weight / total if total > 0 else 1.0)
        self.total_weight += weight
        self.updates += 1
        self.step = step + 1
        return weight

    def _counters(self) -> dict[str, Any]:
        return {"total_weight": self.total_weight, "step": self.step}

    def _restore_counters(self, saved: Mapping[str, Any]) -> None:
        self.total_weight = float(saved["total_weight"])
        self.step = int(saved["step"])
