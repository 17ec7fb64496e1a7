"""SWAD (Cha et al. 2021): dense weight averaging inside the window its loss-valley rule picks.

Training is cut into segments of K steps; each segment holds the dense (every-step) average
of its iterates and the source-validation loss at its end. `LossValley` is the rule of the
official code's `LossValley` (khanrc/swad, domainbed/swad.py), fed one segment at a time:

- convergence: the first of the last N_s segments has the minimum loss (the first on ties);
  that segment, c, is where the valley is found;
- threshold τ = r × the mean loss of those N_s segments;
- the window opens at the earliest segment before c, within the last N_e segments, from which
  every loss up to c is ≤ τ (c itself always is: its loss is the minimum);
- each later segment j joins once N_e segments from j on are known, if their minimum loss is
  ≤ τ; otherwise the valley is dead and the window ends before j;
- at the end of the run the undecided segments join while the minimum loss from them to the
  end is ≤ τ;
- the final model averages the window's segments weighted by their step counts, i.e. the
  dense average of every iterate in the window.

Where this differs from the official code, on purpose:
- τ = r × mean with r = `tolerance_ratio` (the paper's r = 1.2); the official code multiplies
  by (1 + tolerance_ratio) with tolerance_ratio = 0.3;
- every segment enters the window once: the official code adds segment c up to three times
  (at convergence, in its look-back loop and again from its tolerance queue) and skips the
  first look-back segment, and with N_e < N_s adds segments after c without the threshold test;
- segments are weighted by their step counts (the official code weighs them equally; the same
  when every segment has K steps, which only the last one may not);
- a run that ends before convergence averages from its minimum-loss segment to the end and
  says so (`fallback`); the official code returns the last segment's average, which is the
  same whenever the loss still falls at the end.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from dataclasses import dataclass
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from dgmerge.merging import HistoricalAverage
from dgmerge.training.observers import StateDict, trainable_state, uniform_average, with_average


@dataclass
class Segment:
    """K consecutive iterates: their dense average, how many, which steps, and the loss at the end."""

    state: StateDict
    steps: int
    loss: float
    first_step: int
    last_step: int

    def export(self) -> dict[str, Any]:
        return {"state": self.state, "steps": self.steps, "loss": self.loss, "first_step": self.first_step,
                "last_step": self.last_step}


def _step_weighted_mean(device: str | torch.device | None) -> HistoricalAverage:
    # HistoricalAverage folds each update in with weight weight_fn(step); passing a segment's
    # step count as `step` with weight_fn=float weighs the segment by its step count.
    return HistoricalAverage(weight_fn=float, device=device)


class LossValley:
    """SWAD's window rule over (segment average, segment steps, validation loss) triples.

    `update` per segment, then `final_state()` for the step-weighted average of the window.
    Holds at most max(N_s, N_e) segment averages at a time, plus the window's running mean.
    `device`: where the segments and the window's mean are kept (None: where they come from).
    """

    def __init__(self, n_converge: int = 3, n_tolerance: int = 6, tolerance_ratio: float = 1.2,
                 device: str | torch.device | None = None) -> None:
        if n_converge < 1 or n_tolerance < 1:
            raise ValueError(f"SWAD needs n_converge, n_tolerance >= 1, got {n_converge}, {n_tolerance}")
        if tolerance_ratio <= 1.0:
            raise ValueError(f"SWAD's tolerance_ratio r={tolerance_ratio} must be > 1 (τ = r × mean loss)")
        self.n_converge, self.n_tolerance, self.tolerance_ratio = n_converge, n_tolerance, tolerance_ratio
        self.device = torch.device(device) if device is not None else None
        # Before convergence: the last max(N_s, N_e) segments; after it: the undecided ones.
        self._held: deque[Segment] = deque()
        self._window = _step_weighted_mean(device)
        self.losses: list[float] = []
        self.steps_seen = 0
        self.threshold: float | None = None
        self.converge_step: int | None = None
        self.window_start: int | None = None
        self.window_end: int | None = None
        self.window_segments = 0
        self.dead = False
        self.fallback = False
        self.finished = False

    @property
    def converged(self) -> bool:
        """Whether the valley has been found (a threshold is set)."""
        return self.threshold is not None

    @property
    def done(self) -> bool:
        """Whether later segments can no longer change the window (dead valley, or finished)."""
        return self.dead or self.finished

    def update(self, state: Mapping[str, Tensor], steps: int, loss: float) -> None:
        """One more segment: the dense average of its `steps` iterates and the validation loss at its end."""
        if self.finished:
            raise RuntimeError("LossValley.update after final_state(): the window is already closed")
        if steps < 1:
            raise ValueError(f"a segment needs at least one step, got {steps}")
        if not math.isfinite(loss):
            raise ValueError(f"SWAD's validation loss must be finite, got {loss}")
        self.losses.append(float(loss))
        first = self.steps_seen + 1
        self.steps_seen += steps
        if self.dead:
            return
        kept = {k: v.detach().to(device=self.device or v.device, copy=True) for k, v in state.items()}
        self._held.append(Segment(kept, steps, float(loss), first, self.steps_seen))
        if self.converged:
            self._decide(at_end=False)
            return
        while len(self._held) > max(self.n_converge, self.n_tolerance):
            self._held.popleft()
        self._try_converge()

    def _try_converge(self) -> None:
        if len(self._held) < self.n_converge:
            return
        held = list(self._held)
        c = len(held) - self.n_converge
        candidates = [s.loss for s in held[c:]]
        # min() returns the first minimum, like the official code's np.argmin.
        if candidates.index(min(candidates)) != 0:
            return
        self.threshold = self.tolerance_ratio * statistics.fmean(candidates)
        self.converge_step = held[c].last_step
        # Look back from c through the tolerance queue (the last N_e segments) while the loss stays under τ.
        start = c
        while start - 1 >= max(0, len(held) - self.n_tolerance) and held[start - 1].loss <= self.threshold:
            start -= 1
        for segment in held[start:c + 1]:
            self._add(segment)
        self._held = deque(held[c + 1:])
        self._decide(at_end=False)

    def _decide(self, at_end: bool) -> None:
        """Admit undecided segments whose next N_e losses (all the rest, at the end) reach under τ."""
        assert self.threshold is not None
        while self._held and (at_end or len(self._held) >= self.n_tolerance):
            ahead = list(self._held)[:self.n_tolerance]
            if min(s.loss for s in ahead) > self.threshold:
                if not at_end:
                    self.dead = True
                self._held.clear()
                return
            self._add(self._held.popleft())

    def _add(self, segment: Segment) -> None:
        self._window.update(segment.state, step=segment.steps)
        if self.window_start is None:
            self.window_start = segment.first_step
        self.window_end = segment.last_step
        self.window_segments += 1

    def final_state(self) -> StateDict:
        """The step-weighted average of the window's segments (closes the window on first call).

        Before convergence, the fallback: every segment from the minimum-loss one to the end.
        """
        if not self.finished:
            if self.converged:
                if not self.dead:
                    self._decide(at_end=True)
            elif self._held:
                held = list(self._held)
                losses = [s.loss for s in held]
                # Unconverged means no N_s-window starts at its minimum, so the run's first
                # minimum lies among the last N_s - 1 held segments: the held ones suffice.
                for segment in held[losses.index(min(losses)):]:
                    self._add(segment)
                self.fallback = True
                self._held.clear()
            self.finished = True
        if self.window_segments == 0:
            raise ValueError("SWAD saw no segment: the run evaluated its validation loss no time")
        return self._window.state_dict()

    def summary(self) -> dict[str, Any]:
        """What the rule decided, for the result row."""
        return {"converged": self.converged, "converge_step": self.converge_step, "threshold": self.threshold,
                "window": [self.window_start, self.window_end], "window_segments": self.window_segments,
                "dead_valley": self.dead, "fallback": self.fallback, "segment_losses": list(self.losses)}

    def export(self) -> dict[str, Any]:
        """Everything needed to resume (tensors and plain values only)."""
        return {"held": [s.export() for s in self._held], "window": self._window.export(),
                "losses": list(self.losses), "steps_seen": self.steps_seen, "threshold": self.threshold,
                "converge_step": self.converge_step, "window_start": self.window_start,
                "window_end": self.window_end, "window_segments": self.window_segments, "dead": self.dead}

    def restore(self, saved: Mapping[str, Any]) -> None:
        """Resume from `export()`."""
        self._held = deque(Segment(**{**s, "state": {k: v.to(self.device or v.device) for k, v in s["state"].items()}})
                           for s in saved["held"])
        self._window.restore(saved["window"])
        self.losses, self.steps_seen = list(saved["losses"]), int(saved["steps_seen"])
        self.threshold, self.converge_step = saved["threshold"], saved["converge_step"]
        self.window_start, self.window_end = saved["window_start"], saved["window_end"]
        self.window_segments, self.dead = int(saved["window_segments"]), bool(saved["dead"])


class SwadObserver:
    """SWAD on a fine-tuning run: dense averages of K-step segments fed to a `LossValley`.

    Asks for the validation loss every `every` steps (and at the last step) until the valley
    is dead; from then on it costs nothing.
    """

    name = "swad"

    def __init__(self, valley: LossValley, every: int) -> None:
        if every < 1:
            raise ValueError(f"SWAD's evaluation interval K={every} must be >= 1")
        self.valley = valley
        self.every = every
        self._segment = uniform_average(valley.device)

    def on_step(self, step: int, model: nn.Module) -> None:
        # θ0 (step 0) is no iterate of SWAD's: its segments start after the first update.
        if step > 0 and not self.valley.done:
            self._segment.update(trainable_state(model))

    def wants_val_loss(self, step: int, total_steps: int) -> bool:
        return not self.valley.done and step > 0 and (step % self.every == 0 or step == total_steps)

    def on_val_loss(self, step: int, model: nn.Module, loss: float) -> None:
        self.valley.update(self._segment.state_dict(), self._segment.updates, loss)
        self._segment = uniform_average(self.valley.device)

    def averaged(self, final_state: Mapping[str, Tensor]) -> StateDict:
        """The run's final state with its trained tensors replaced by SWAD's window average."""
        return with_average(final_state, self.valley.final_state())

    def state_dict(self) -> dict[str, Any]:
        return {"segment": self._segment.export(), "valley": self.valley.export()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._segment.restore(state["segment"])
        self.valley.restore(state["valley"])


__all__ = ["LossValley", "Segment", "SwadObserver"]
