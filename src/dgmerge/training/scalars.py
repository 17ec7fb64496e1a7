"""Training history records as TensorBoard scalars, for watching a long run live (optional extra)."""

from __future__ import annotations

import math
from numbers import Real
from pathlib import Path
from typing import Any


class ScalarLog:
    """Writes history records as scalars; with no writer (no log dir, no tensorboard) does nothing."""

    def __init__(self, writer: Any = None) -> None:
        self._writer = writer

    def write(self, step: int, record: dict[str, Any]) -> None:
        """Add every finite number of `record` under its key as tag; "step" is the x axis, not a tag."""
        if self._writer is None:
            return
        for tag, value in record.items():
            # bool is an int subclass, but a flag is not a curve worth plotting.
            if tag == "step" or isinstance(value, bool) or not isinstance(value, Real):
                continue
            value = float(value)
            if math.isfinite(value):
                self._writer.add_scalar(tag, value, global_step=step)

    def close(self) -> None:
        """Flush and close the event file; later calls do nothing."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __enter__(self) -> ScalarLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_scalar_log(log_dir: Path | None) -> ScalarLog:
    """A TensorBoard scalar log in `log_dir`; a silent no-op when it is None or tensorboard is absent."""
    if log_dir is None:
        return ScalarLog()
    try:
        # torch.utils.tensorboard raises ImportError itself when the tensorboard package is missing.
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return ScalarLog()
    # Flushed every 30 s (default 120 s) so TensorBoard shows a running job without long lag.
    return ScalarLog(SummaryWriter(log_dir=str(log_dir), flush_secs=30))
