"""The benchmark scripts are files, not a package: tests load them by name."""

import importlib.util
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture
def script(monkeypatch):
    """script("gpu_paper_scale") -> the module benchmarks/gpu_paper_scale.py, freshly loaded."""

    def load(name: str):
        spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        # Registered first: dataclasses resolve string annotations through sys.modules.
        monkeypatch.setitem(sys.modules, name, module)
        spec.loader.exec_module(module)
        return module

    return load
