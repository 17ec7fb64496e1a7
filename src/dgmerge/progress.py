"""Progress reporting: tqdm bars on a terminal, timed plain lines in logs, silence under DGMERGE_QUIET.

`progress` wraps any iterable (bars only). `progress_steps` is for training loops: on a terminal it
is a bar with the latest scalars; when stderr is a file or pipe (nohup, sbatch) it prints one line
every `every_s` seconds, so a long run is visibly alive in its log.
"""

from __future__ import annotations

import math
import os
import sys
import time
from typing import Callable, Iterable, Iterator, Sized, TextIO, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")

# Seconds between postfix refreshes of a bar: formatting on every step would slow a fast loop.
BAR_POSTFIX_EVERY_S = 0.25


def progress_enabled() -> bool:
    """Bars only on an interactive stderr, so CI logs and test output stay readable."""
    return sys.stderr.isatty() and not os.environ.get("DGMERGE_QUIET")


def progress(items: Iterable[T], desc: str, total: int | None = None) -> Iterator[T]:
    """Wrap an iterable in a progress bar when bars are enabled."""
    if not progress_enabled():
        yield from items
        return
    yield from tqdm(items, desc=desc, total=total, leave=False, dynamic_ncols=True)


def log_every_s(default: float) -> float:
    """Seconds between progress lines: DGMERGE_LOG_EVERY when set (no config edit needed), else `default`."""
    raw = os.environ.get("DGMERGE_LOG_EVERY", "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"DGMERGE_LOG_EVERY must be a number of seconds, got {raw!r}") from None
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"DGMERGE_LOG_EVERY must be a finite number of seconds >= 0, got {raw!r}")
    return value


def format_duration(seconds: float) -> str:
    """42s, 1m02s or 1h02m03s."""
    s = max(0, int(round(seconds)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m{s % 60:02d}s"


def _format_scalar(value: float) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return f"{value:.4g}"


class StepProgress:
    """Iterate over training steps and report them; the loop calls `update` once per step.

    The mode is fixed at construction: "bar" (terminal), "lines" (stderr not a terminal) or
    "quiet" (DGMERGE_QUIET set). `total` is the whole run's step count; when `steps` has a length
    shorter than `total` (a resumed run: range(first_step, steps + 1)), the missing steps count as
    done before this run, so lines show the real step while the ETA uses this run's pace only.
    """

    def __init__(self, steps: Iterable[int], desc: str, total: int, every_s: float = 30.0, *,
                 clock: Callable[[], float] = time.monotonic, stream: TextIO | None = None) -> None:
        self.desc = desc
        self.total = total
        self.every_s = log_every_s(every_s)
        self.done = 0  # steps finished in this run
        # Steps finished before this run (a resume); Sized because a generator has no length.
        self.before = max(0, total - len(steps)) if isinstance(steps, Sized) else 0
        self.scalars: dict[str, float] = {}
        self._steps = steps
        self._clock = clock
        # Resolved now rather than at import so pytest's capture (and redirections) are honoured.
        self._stream = stream if stream is not None else sys.stderr
        if os.environ.get("DGMERGE_QUIET"):
            self.mode = "quiet"
        elif progress_enabled():
            self.mode = "bar"
        else:
            self.mode = "lines"
        self._bar = (tqdm(total=total, initial=self.before, desc=desc, leave=False, dynamic_ncols=True)
                     if self.mode == "bar" else None)
        self._start = self._mark = clock()
        self._images = 0  # images since the last line / postfix refresh
        self._images_total = 0
        self._line_done: int | None = None  # `position` when the last line was written
        self._closed = False

    def __iter__(self) -> Iterator[int]:
        # try/finally: a loop that ends, breaks or raises still gets its final line.
        self._start = self._mark = self._clock()  # setup before the loop is not training time
        try:
            for step in self._steps:
                yield step
                if self._bar is not None:
                    self._bar.update(1)
        finally:
            self.close()

    def __enter__(self) -> StepProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def position(self) -> int:
        """Steps finished, counting those before a resume."""
        return self.before + self.done

    def update(self, images: int = 0, **scalars: float) -> None:
        """Record one finished step: images it processed and its latest scalars (e.g. loss=0.81)."""
        if self.mode == "quiet":
            return
        self.done += 1
        self._images += images
        self._images_total += images
        self.scalars.update(scalars)
        now = self._clock()
        if now - self._mark < (BAR_POSTFIX_EVERY_S if self.mode == "bar" else self.every_s):
            return
        if self._bar is not None:
            self._bar.set_postfix_str(self._fields(now), refresh=False)
            self._reset_interval(now)
        else:
            self._write_line(now)

    def close(self) -> None:
        """Write the final line (or close the bar); later calls do nothing."""
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.close()
        elif self.mode == "lines" and self._line_done != self.position:
            self._write_line(self._clock(), final=True)

    def _fields(self, now: float) -> str:
        """Scalars and images/s over the interval since the last report."""
        parts = [f"{name} {_format_scalar(value)}" for name, value in self.scalars.items()]
        interval = now - self._mark
        if self._images_total and interval > 0:
            parts.append(f"images/s {self._images / interval:.1f}")
        return " ".join(parts)

    def _write_line(self, now: float, final: bool = False) -> None:
        elapsed = now - self._start
        parts = [f"{self.desc}: step {self.position}/{self.total}"]
        if self.total > 0:
            parts.append(f"({100 * self.position // self.total}%)")
        fields = self._fields(now)
        if fields:
            parts.append(fields)
        parts.append(f"elapsed {format_duration(elapsed)}")
        if self.position >= self.total:
            parts.append("done")
        elif final:
            parts.append("stopped")
        elif self.done > 0:
            parts.append(f"eta {format_duration(elapsed / self.done * (self.total - self.position))}")
        # Flushed at once: under nohup stderr may be a block-buffered file.
        print(" ".join(parts), file=self._stream, flush=True)
        self._line_done = self.position
        self._reset_interval(now)

    def _reset_interval(self, now: float) -> None:
        self._mark = now
        self._images = 0


def progress_steps(steps: Iterable[int], desc: str, total: int, every_s: float = 30.0, *,
                   clock: Callable[[], float] = time.monotonic, stream: TextIO | None = None) -> StepProgress:
    """Step logger for a training loop: `for step in (log := progress_steps(...)): ...; log.update(...)`.

    A bar on a terminal, a plain line every `every_s` seconds (DGMERGE_LOG_EVERY overrides; 0 =
    every step) plus a final line when stderr is not a terminal, nothing under DGMERGE_QUIET.
    """
    return StepProgress(steps, desc, total, every_s, clock=clock, stream=stream)
