"""Atomic writes: all or nothing, with ordinary file permissions."""

import os
import stat

from dgmerge.atomic import write_text_atomic


def test_atomic_writes_get_ordinary_permissions(tmp_path):
    mask = os.umask(0o022)
    try:
        path = write_text_atomic(tmp_path / "report.md", "x")
    finally:
        os.umask(mask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp file left behind


def test_failed_write_leaves_the_old_file(tmp_path):
    from dgmerge.atomic import atomic_write

    path = write_text_atomic(tmp_path / "r.txt", "old")
    try:
        with atomic_write(path) as temp:
            temp.write_text("half")
            raise RuntimeError("killed mid-write")
    except RuntimeError:
        pass
    assert path.read_text() == "old" and len(list(tmp_path.iterdir())) == 1
