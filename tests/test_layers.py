"""The package's layers, checked from the source: imports go down only, never up or sideways.

Every `import`/`from ... import` of a dgmerge module anywhere in src/dgmerge counts —
function-level ones and TYPE_CHECKING blocks too, so no cycle can hide inside a function.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "dgmerge"

# Bottom to top. A package may import packages of lower layers (and itself) only.
LAYERS: list[set[str]] = [
    {"__init__"},
    {"atomic", "device", "hashing", "machine", "progress", "version"},
    {"files"},
    {"data", "merging"},
    {"models"},
    {"config"},
    {"training"},
    {"evaluation"},
    {"reports"},
    {"gating"},
    {"methods"},
    {"pipeline"},
    {"cli"},
]
LAYER = {package: i for i, packages in enumerate(LAYERS) for package in packages}


def _package(path: Path, root: Path) -> str:
    return path.relative_to(root).with_suffix("").parts[0]


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, imported top-level dgmerge package) for every dgmerge import in `path`."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] if node.module != "dgmerge" else [f"dgmerge.{a.name}" for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level > 0:
            raise AssertionError(f"{path}:{node.lineno}: relative import; use the full dgmerge.… path")
        for name in names:
            parts = name.split(".")
            if parts[0] == "dgmerge":
                target = parts[1] if len(parts) > 1 else "__init__"
                found.append((node.lineno, "__init__" if target == "__version__" else target))
    return found


def upward_imports(root: Path = SRC) -> list[str]:
    """Every import that goes up or sideways, as 'file:line: a -> b'."""
    problems = []
    for path in sorted(root.rglob("*.py")):
        package = _package(path, root)
        if package not in LAYER:
            problems.append(f"{path.relative_to(root)}: package {package!r} has no layer in tests/test_layers.py")
            continue
        for line, target in _imports(path):
            if target == package:
                continue
            if target not in LAYER:
                problems.append(f"{path.relative_to(root)}:{line}: imports unknown dgmerge package {target!r}")
            elif LAYER[target] >= LAYER[package]:
                problems.append(f"{path.relative_to(root)}:{line}: {package} (layer {LAYER[package]}) imports "
                                f"{target} (layer {LAYER[target]})")
    return problems


def test_imports_go_down_the_layers_only():
    problems = upward_imports()
    assert not problems, "imports against the layers:\n" + "\n".join(problems)


def test_the_check_catches_an_upward_import_inside_a_function(tmp_path):
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "x.py").write_text("def f():\n    from dgmerge.pipeline.experiment import run\n")
    (tmp_path / "pipeline").mkdir()
    (tmp_path / "pipeline" / "y.py").write_text("import dgmerge.models.x\n")
    problems = upward_imports(tmp_path)
    assert problems == ["models/x.py:2: models (layer 4) imports pipeline (layer 11)"]


@pytest.mark.parametrize("package", sorted(p.name for p in SRC.iterdir() if p.is_dir() and (p / "__init__.py").exists()))
def test_every_package_has_a_layer(package):
    assert package in LAYER
