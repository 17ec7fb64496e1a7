"""dgmerge.files is the bottom layer: importing it loads no other part of dgmerge."""

from __future__ import annotations

import subprocess
import sys


def test_importing_files_loads_only_dgmerge_atomic():
    code = "import sys, dgmerge.files; print(sorted(m for m in sys.modules if m.startswith('dgmerge')))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    loaded = {m for m in eval(done.stdout) if not m.startswith("dgmerge.files")}
    assert loaded == {"dgmerge", "dgmerge.atomic"}
