"""Observers of a fine-tuning trajectory: averages that ride on one ERM run instead of training their own.

`fine_tune(..., observers=[...])` shows each observer every iterate (`on_step`, after the
optimizer step; step 0 is θ0, in a fresh run) and, at the steps it asks for, the mean
source-validation loss (`wants_val_loss` / `on_val_loss`). Observers save and restore their
state with the run's checkpoint, so a killed and resumed run ends with the same averages.

Only the trainable parameters are averaged: frozen tensors (θ0's prefix, the frozen head) and
buffers come from the live model at the end, as HAM's historical average does — averaging a
constant in float can move it by an ulp, which a later merge would read as an update.
"""

from __future__ import annotations

from typing import Any, Mapping, Protocol

import torch
from torch import Tensor, nn

from dgmerge.device import to_device
from dgmerge.merging import HistoricalAverage

StateDict = dict[str, Tensor]


class TrajectoryObserver(Protocol):
    """What `fine_tune` calls on an observer; `name` keys its state in the run's checkpoint."""

    name: str

    def on_step(self, step: int, model: nn.Module) -> None:
        """See the weights after optimizer step `step` (step 0: θ0, before training)."""

    def wants_val_loss(self, step: int, total_steps: int) -> bool:
        """Whether the source-validation loss is needed after step `step` (it costs a pass)."""

    def on_val_loss(self, step: int, model: nn.Module, loss: float) -> None:
        """The mean source-validation cross-entropy after step `step`."""

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume (tensors and plain values only)."""

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Resume from `state_dict()`."""


def trainable_state(model: nn.Module) -> StateDict:
    """The parameters being trained (requires_grad), by state-dict name, not copied."""
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def with_average(final_state: Mapping[str, Tensor], average: Mapping[str, Tensor]) -> StateDict:
    """The run's final state with its trained tensors replaced by `average`, on the final state's device."""
    device = next(iter(final_state.values())).device if final_state else torch.device("cpu")
    return {**final_state, **to_device(dict(average), device)}


def uniform_average(device: str | torch.device | None = None) -> HistoricalAverage:
    """A running arithmetic mean: every update weighs the same (HAM's average with γ_t = 1)."""
    return HistoricalAverage(weight_fn=lambda _step: 1.0, device=device)


class MovingAverage:
    """The uniform mean of every iterate θ_t with t ≥ `start_step` (Arpit et al. 2022's MA).

    θ0 is the iterate of step 0, so `start_step=0` includes it, as Ensemble of Averages'
    code does (its average starts as a copy of the network). `device`: where the mean is kept.
    """

    name = "ma"

    def __init__(self, start_step: int, device: str | torch.device | None = None) -> None:
        if start_step < 0:
            raise ValueError(f"MA start_step={start_step} must be >= 0")
        self.start_step = start_step
        self._average = uniform_average(device)
        self.first_step: int | None = None
        self.last_step: int | None = None

    @property
    def count(self) -> int:
        """How many iterates the mean holds."""
        return self._average.updates

    def on_step(self, step: int, model: nn.Module) -> None:
        if step >= self.start_step:
            self._average.update(trainable_state(model), step=step)
            self.first_step = step if self.first_step is None else self.first_step
            self.last_step = step

    def wants_val_loss(self, step: int, total_steps: int) -> bool:
        return False

    def on_val_loss(self, step: int, model: nn.Module, loss: float) -> None:
        pass

    def average(self) -> StateDict:
        """The mean of the trained tensors (ValueError before any iterate reached `start_step`)."""
        if self.count == 0:
            raise ValueError(f"MA holds no iterate: the run never reached start_step={self.start_step}")
        return self._average.state_dict()

    def averaged(self, final_state: Mapping[str, Tensor]) -> StateDict:
        """The run's final state with its trained tensors replaced by the moving average."""
        return with_average(final_state, self.average())

    def state_dict(self) -> dict[str, Any]:
        return {"average": self._average.export(), "first_step": self.first_step, "last_step": self.last_step}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._average.restore(state["average"])
        self.first_step, self.last_step = state["first_step"], state["last_step"]


__all__ = ["MovingAverage", "StateDict", "TrajectoryObserver", "trainable_state", "uniform_average", "with_average"]
