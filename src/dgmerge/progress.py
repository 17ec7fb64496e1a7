"""Progress bars that stay quiet when output is not a terminal or DGMERGE_QUIET is set."""

from __future__ import annotations

import os
import sys
from typing import Iterable, Iterator, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def progress_enabled() -> bool:
    """Bars only on an interactive stderr, so CI logs and test output stay readable."""
    return sys.stderr.isatty() and not os.environ.get("DGMERGE_QUIET")


def progress(items: Iterable[T], desc: str, total: int | None = None) -> Iterator[T]:
    """Wrap an iterable in a progress bar when bars are enabled."""
    if not progress_enabled():
        yield from items
        return
    yield from tqdm(items, desc=desc, total=total, leave=False, dynamic_ncols=True)
