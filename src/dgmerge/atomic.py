"""Atomic file writes: a temp file in the target's folder, renamed into place on success.

An interrupted run never leaves a half-written model, cache or report behind.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def atomic_write(final: Path) -> Iterator[Path]:
    """Yield a temp path next to `final`; it replaces `final` only if the block succeeds."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(handle)
    temp = Path(name)
    try:
        yield temp
        # mkstemp creates 0600 files; give the result the permissions a plain open() would.
        os.chmod(temp, 0o666 & ~_umask())
        os.replace(temp, final)
    finally:
        temp.unlink(missing_ok=True)


def write_text_atomic(path: Path, text: str) -> Path:
    """Write a text file via temp file + rename."""
    with atomic_write(path) as temp:
        temp.write_text(text, encoding="utf-8")
    return Path(path)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
