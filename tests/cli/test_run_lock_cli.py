"""A second `dgmerge bench pacs-cpu` on a directory in use is refused before it touches anything."""

import subprocess
import sys

from typer.testing import CliRunner

from dgmerge.cli.main import app

HOLD = """
import sys, time
from pathlib import Path
from dgmerge.pipeline.run_lock import run_lock
with run_lock(Path(sys.argv[1]), "dgmerge bench pacs-cpu"):
    print("held", flush=True)
    time.sleep(60)
"""


def test_force_on_a_directory_in_use_deletes_nothing(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "results.jsonl").write_text('{"method": "erm"}\n')
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        result = CliRunner().invoke(app, ["bench", "pacs-cpu", "--force", "--quick", "--out", str(out)])
        assert result.exit_code == 2
        assert f"in use by another run (pid {holder.pid}" in result.output
        assert (out / "results.jsonl").read_text() == '{"method": "erm"}\n'
        # --status only reads, so it works beside the running holder.
        status = CliRunner().invoke(app, ["bench", "pacs-cpu", "--status", "--out", str(out),
                                          "--data-root", str(tmp_path / "nowhere")])
        assert "in use by another run" not in status.output
    finally:
        holder.kill()
        holder.wait()
