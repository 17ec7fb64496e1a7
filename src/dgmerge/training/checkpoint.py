"""Periodic training checkpoints, so an interrupted run resumes where it stopped.

A checkpoint holds everything the next steps depend on: model weights, optimizer and
schedule states, batch-stream positions, running averages, best checkpoints, the history so
far and torch's global RNG. It is written atomically and loaded with weights_only=True
(tensors and plain values only), and deleted once the run has finished.

A checkpoint also holds the run's wall time so far (`wall_time_s`), so a resumed run reports the
time of every process that trained it, not only the last one's: a benchmark's compute figures are
summed from these times. A checkpoint written before this field existed (dgmerge before 2026-12-08)
counts as no earlier time, so such a run reports only the time since its last resume.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from dgmerge.atomic import atomic_write


class Checkpointer:
    """Save every `every` steps to `path`; `load()` returns the last save or None."""

    def __init__(self, path: Path | None, every: int = 0):
        self.path = Path(path) if path is not None else None
        self.every = every
        # Wall time the run had spent, in earlier processes, up to the save it resumed from.
        self.earlier_s = 0.0

    @property
    def enabled(self) -> bool:
        return self.path is not None and self.every > 0

    def due(self, step: int, total: int) -> bool:
        # The last step needs no checkpoint: the finished run's results are written instead.
        return self.enabled and step % self.every == 0 and step < total

    def wall_time_s(self, start: float) -> float:
        """The run's wall time: this process's since `start` (a perf_counter reading) plus earlier ones'."""
        return self.earlier_s + time.perf_counter() - start

    def save(self, payload: dict[str, Any]) -> None:
        assert self.path is not None
        payload = {**payload, "rng": torch.get_rng_state()}
        if torch.cuda.is_available():
            # GPU-side randomness (dropout on CUDA) has its own generator per device.
            payload["cuda_rng"] = torch.cuda.get_rng_state_all()
        with atomic_write(self.path) as temp:
            torch.save(payload, temp)

    def load(self) -> dict[str, Any] | None:
        self.earlier_s = 0.0
        if not self.enabled or not self.path.is_file():  # type: ignore[union-attr]
            return None
        try:
            # Onto the CPU: the loops move what they restore to their own device, so a run
            # saved on one GPU (or on the CPU) resumes on another.
            payload = torch.load(self.path, weights_only=True, map_location="cpu")
        except Exception as exc:  # a truncated or foreign file: say which, do not guess
            raise ValueError(f"cannot resume from {self.path}: {exc}; delete it to start this run afresh") from exc
        self.earlier_s = float(payload.get("wall_time_s", 0.0))
        torch.set_rng_state(payload["rng"])
        if payload.get("cuda_rng") is not None and torch.cuda.is_available():
            if len(payload["cuda_rng"]) == torch.cuda.device_count():
                torch.cuda.set_rng_state_all(payload["cuda_rng"])
        return payload

    def finish(self) -> None:
        if self.path is not None:
            self.path.unlink(missing_ok=True)


NO_CHECKPOINT = Checkpointer(None)
