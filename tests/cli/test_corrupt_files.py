"""`dgmerge merge`, `inspect` and `evaluate` on broken .safetensors files.

Each command must print one line naming the broken file (no traceback), exit with 2, and
write nothing: no merged model, no report, no heatmap, no temporary file.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from dgmerge.cli.main import app
from dgmerge.files import save_model, save_state_dict
from files.corrupt import CLI_CASES, CORRUPT, write_corrupt

runner = CliRunner()


def _state(seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {"w": torch.randn(3, 2, generator=gen), "b": torch.randn(3, generator=gen)}


def _dataset(root: Path) -> Path:
    """One domain, two classes, one image each: a valid DomainBed folder for --data."""
    for cls in ("a", "b"):
        (root / "dom" / cls).mkdir(parents=True)
        Image.new("RGB", (8, 8), (10, 20, 30)).save(root / "dom" / cls / "x.png")
    return root


def _inputs(tmp: Path, role: str, case: str) -> tuple[Path, list[str]]:
    """(the broken file, the command line) for one command and one broken input."""
    good = save_state_dict(tmp / "good.safetensors", _state(1))
    pre = save_state_dict(tmp / "pre.safetensors", _state(0))
    bad = write_corrupt(tmp / "bad.safetensors", case)
    if role == "merge model":
        return bad, ["merge", "-m", "average", "-p", str(pre), "--models", str(good), str(bad),
                     "--out", str(tmp / "out" / "merged.safetensors")]
    if role == "merge pretrained":
        return bad, ["merge", "-m", "ties", "-p", str(bad), "--models", str(good), str(pre),
                     "--out", str(tmp / "merged.pt")]
    if role == "inspect":
        return bad, ["inspect", "-p", str(pre), "--models", str(bad), str(good),
                     "--json", str(tmp / "report.json"), "--heatmap", str(tmp / "heat.png")]
    data = _dataset(tmp / "data")
    if role == "evaluate":
        return bad, ["evaluate", str(bad), "--data", str(data)]
    # A model whose architecture comes from --like: the metadata reads fine, the weights do not.
    like = save_model(tmp / "like.safetensors", torch.nn.Linear(2, 2), {"method": "erm", "classes": ["a", "b"]})
    if role == "evaluate weights":
        return bad, ["evaluate", str(bad), "--like", str(like), "--data", str(data)]
    return bad, ["evaluate", str(like), "--like", str(bad), "--data", str(data)]


def _files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*")}


ROLES = ["merge model", "merge pretrained", "inspect", "evaluate", "evaluate weights", "evaluate like"]


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("case", CLI_CASES)
def test_broken_safetensors_is_one_line_naming_the_file_and_nothing_is_written(tmp_path, case, role):
    bad, args = _inputs(tmp_path, role, case)
    before = _files(tmp_path)
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit)  # typer.Exit, not an escaped error
    assert result.output.count("\n") == 1 and result.output.startswith(f"error: {bad}: ")
    assert CORRUPT[case][1] in result.output and "Traceback" not in result.output
    assert _files(tmp_path) == before


@pytest.mark.parametrize("case", CLI_CASES)
def test_the_installed_command_prints_no_traceback(tmp_path, case):
    # The real entry point, in a fresh process: what a user sees on the terminal.
    import subprocess
    import sys

    bad, args = _inputs(tmp_path, "merge model", case)
    done = subprocess.run([sys.executable, "-c", "from dgmerge.cli.main import main; main()", *args],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and done.stderr.startswith(f"error: {bad}: ")
    assert not (tmp_path / "out").exists()
