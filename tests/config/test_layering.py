"""The config package sits above models and below training: importing it loads no training code.

The static check of every import (function-level ones included) for the whole package is
tests/test_layers.py; this one checks what a fresh interpreter actually loads.
"""

from __future__ import annotations

import ast


def test_config_imports_without_training_code():
    # A fresh interpreter: importing the config package must not pull in training or anything above.
    import subprocess
    import sys

    code = ("import sys, dgmerge.config; "
            "print(sorted({m.split('.')[1] for m in sys.modules if m.startswith('dgmerge.') and m.count('.') >= 1}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    loaded = set(ast.literal_eval(out.strip()))
    assert not loaded & {"training", "evaluation", "reports", "methods", "pipeline", "cli", "gating"}, loaded
