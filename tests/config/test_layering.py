"""The config package sits above models and below training: checked from the source, every import.

Function-level imports count too: a lower package must not reach up even lazily.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import dgmerge

PACKAGE = Path(dgmerge.__file__).resolve().parent
# What each checked package may import from dgmerge (packages strictly below it).
BOTTOM = {"atomic", "progress", "version", "files", "hashing"}
MAY_IMPORT = {
    "models": BOTTOM | {"data", "merging"},
    "config": BOTTOM | {"data", "merging", "models"},
}


def dgmerge_imports(package: str) -> dict[str, set[str]]:
    """{top-level dgmerge package imported: files of `package` importing it}, from every import statement."""
    found: dict[str, set[str]] = {}
    for path in (PACKAGE / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            for name in names:
                parts = name.split(".")
                if parts[0] == "dgmerge" and len(parts) > 1 and parts[1] != package:
                    found.setdefault(parts[1], set()).add(str(path.relative_to(PACKAGE)))
    return found


@pytest.mark.parametrize("package", sorted(MAY_IMPORT))
def test_package_imports_only_packages_below_it(package):
    imports = dgmerge_imports(package)
    # `from dgmerge.models import LOADERS` names "LOADERS" as a candidate package: ignore non-packages.
    upward = {name: files for name, files in imports.items()
              if name not in MAY_IMPORT[package] and ((PACKAGE / name).is_dir() or (PACKAGE / f"{name}.py").exists())}
    assert not upward, f"dgmerge.{package} imports packages above it: {upward}"


def test_config_imports_without_training_code():
    # A fresh interpreter: importing the config package must not pull in training or anything above.
    import subprocess
    import sys

    code = ("import sys, dgmerge.config; "
            "print(sorted({m.split('.')[1] for m in sys.modules if m.startswith('dgmerge.') and m.count('.') >= 1}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    loaded = set(ast.literal_eval(out.strip()))
    assert not loaded & {"training", "evaluation", "reports", "methods", "pipeline", "cli", "gating"}, loaded
