"""The code version recorded in every result row."""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path

from dgmerge import __version__


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """Package version plus the git commit (and '-dirty') when running from a checkout.

    Results must say which code produced them; a release install has only the version.
    """
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "--short=12", "HEAD"],
            capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return __version__
    return f"{__version__}+g{commit}{'-dirty' if dirty else ''}"
