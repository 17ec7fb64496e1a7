"""Fixtures of the model tests: the real TF-converted MobileNetV2 of ../shared, when present."""

from __future__ import annotations

from pathlib import Path

import pytest

from dgmerge.models.entries import SHARED_MOBILENETV2


@pytest.fixture(scope="session")
def shared_weights(shared_root: Path | None) -> Path:
    """shared/'s MobileNetV2 weights file; the test is skipped when it is absent."""
    if shared_root is None:
        pytest.skip("shared/ folder (repository sibling or $DGMERGE_SHARED) is absent")
    path = shared_root / SHARED_MOBILENETV2
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    return path
