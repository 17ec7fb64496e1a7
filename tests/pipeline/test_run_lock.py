"""One run per output directory."""

import subprocess
import sys

import pytest

from dgmerge.pipeline.run_lock import LOCK_NAME, RunDirectoryBusy, lock_holder, run_lock

HOLD = """
import sys, time
from pathlib import Path
from dgmerge.pipeline.run_lock import run_lock
with run_lock(Path(sys.argv[1]), "dgmerge bench pacs-cpu"):
    print("held", flush=True)
    time.sleep(60)
"""


def test_a_second_run_on_the_same_directory_is_refused_and_named(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert lock_holder(tmp_path).startswith(f"pid {holder.pid}, `dgmerge bench pacs-cpu`, since ")
        with pytest.raises(RunDirectoryBusy, match=rf"{tmp_path} is in use by another run \(pid {holder.pid}, "
                                                   r"`dgmerge bench pacs-cpu`, since .*UTC\).*another --out"):
            with run_lock(tmp_path, "dgmerge run"):
                pytest.fail("the block must not run while another process holds the lock")
    finally:
        holder.kill()
        holder.wait()
    # The holder died without releasing anything by hand: the lock went with it.
    assert lock_holder(tmp_path) is None and lock_holder(tmp_path / "never-ran") is None
    with run_lock(tmp_path, "dgmerge run"):
        assert "`dgmerge run`" in (tmp_path / LOCK_NAME).read_text()


def test_the_lock_is_released_when_the_block_fails(tmp_path):
    with pytest.raises(ValueError):
        with run_lock(tmp_path / "new", "x"):
            raise ValueError("boom")
    with run_lock(tmp_path / "new", "y"):
        pass
