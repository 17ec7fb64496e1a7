"""One run per output directory: an advisory lock held while a command writes there.

Two runs on one directory would train the same cells twice beside each other, each appending
its rows to the same results.jsonl, and `--force` would delete the results a running one is
still writing. The lock is the OS's (flock): it is released however the holder ends, so a
crashed run never leaves a stale lock behind.
"""

from __future__ import annotations

import contextlib
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

try:
    import fcntl
except ImportError:  # Windows: no flock; runs there are not guarded
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = ".dgmerge.lock"


class RunDirectoryBusy(RuntimeError):
    """Another process holds the run directory's lock."""


@contextlib.contextmanager
def run_lock(directory: Path, command: str) -> Iterator[None]:
    """Hold <directory>/.dgmerge.lock for the block; RunDirectoryBusy names the holder if another
    process has it. The file keeps the holder's pid, command and start time for that message."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if fcntl is None:
        yield
        return
    path = directory / LOCK_NAME
    handle = open(path, "a+", encoding="utf-8")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "a process that did not say which"
            raise RunDirectoryBusy(
                f"{directory} is in use by another run ({holder}); wait for it to finish, stop it "
                "(its workers stop with it, and a rerun resumes), or pass another --out") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}, `{command}`, since {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC}\n")
        handle.flush()
        yield
    finally:
        handle.close()  # closing releases the flock


def lock_holder(directory: Path) -> str | None:
    """Who holds <directory>'s run lock ("pid N, `command`, since ..."), or None if no process
    does. Only probes: a lock it obtains is released at once."""
    path = Path(directory) / LOCK_NAME
    if fcntl is None or not path.exists():
        return None
    with open(path, encoding="utf-8") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return handle.read().strip() or "a process that did not say which"
    return None


__all__ = ["LOCK_NAME", "RunDirectoryBusy", "lock_holder", "run_lock"]
