"""Integration with the real PACS in shared/ (skipped when shared/ is not beside the repo)."""

import os
from pathlib import Path

import pytest

from dgmerge.data.environments import make_environments
from dgmerge.data.imagefolder import ImageDataset, scan_domains
from dgmerge.data.transforms import eval_transform

PACS_COUNTS = {"art_painting": 2048, "cartoon": 2344, "photo": 1670, "sketch": 3929}


def shared_dir() -> Path | None:
    """shared/ beside the repository (or $DGMERGE_SHARED), None when absent."""
    env = os.environ.get("DGMERGE_SHARED")
    # tests/data/<this file>: parents[2] is the repository root, shared/ its sibling.
    path = Path(env) if env else Path(__file__).resolve().parents[2].parent / "shared"
    return path if path.is_dir() else None


@pytest.fixture(scope="module")
def pacs_dir() -> Path:
    shared = shared_dir()
    if shared is None or not (shared / "data" / "PACS").is_dir():
        pytest.skip("real PACS not found: set DGMERGE_SHARED or put shared/data/PACS beside the repository")
    return shared / "data" / "PACS"


def test_pacs_scan_counts_and_classes(pacs_dir):
    index = scan_domains(pacs_dir)
    assert {d: len(s) for d, s in index.samples.items()} == PACS_COUNTS
    assert index.domains == tuple(PACS_COUNTS)
    assert index.classes == ("dog", "elephant", "giraffe", "guitar", "horse", "house", "person")


def test_pacs_environments_and_a_few_images(pacs_dir):
    index = scan_domains(pacs_dir)
    envs = make_environments(index, "sketch", trial_seed=0)
    envs.check_no_leak()
    assert envs.sources == ["art_painting", "cartoon", "photo"]
    assert {d: len(envs.train_out[d]) for d in envs.sources} == {"art_painting": 409, "cartoon": 468, "photo": 334}
    assert not [p for s in envs.train_in.values() for p, _ in s if "/sketch/" in str(p)]
    tf = eval_transform(64)
    for domain in index.domains:  # one jpg-or-png decode per domain keeps this cheap
        image, label = ImageDataset(index.samples[domain][:1], tf)[0]
        assert image.shape == (3, 64, 64) and label == 0
