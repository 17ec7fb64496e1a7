"""The code version recorded in every result row.

It is read once, when this module is first imported, which is at a process's start for the CLI
and for scripts that import the pipeline. A run lasts hours while the checkout may move on: reading
it when a row is written recorded the checkout of that moment (a later commit, or '-dirty' from an
edit in progress) instead of the code the process had loaded.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from dgmerge import __version__


def read_code_version(directory: Path) -> str:
    """Package version plus the git commit of `directory`, and '-dirty' for uncommitted edits
    under `directory` (the package's source: a run's own result files, committed as it goes,
    are not the code that produced them).

    A release install, or a directory outside any checkout, has only the version.
    """
    try:
        commit = subprocess.run(
            ["git", "-C", str(directory), "rev-parse", "--short=12", "HEAD"],
            capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(directory), "status", "--porcelain", "--untracked-files=no", "--", "."],
            capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return __version__
    return f"{__version__}+g{commit}{'-dirty' if dirty else ''}"


_AT_IMPORT = read_code_version(Path(__file__).resolve().parent)


def code_version() -> str:
    """The version of the code this process loaded (see the module docstring)."""
    return _AT_IMPORT
