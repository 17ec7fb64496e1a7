"""`dgmerge data check`: counts, unreadable files, differing class sets, exit codes."""

import typer
from PIL import Image
from typer.testing import CliRunner

from dgmerge.cli import data_cmd
from dgmerge.data.check import check_dataset, verify_image


def _cli() -> typer.Typer:
    app = typer.Typer()

    @app.callback()
    def root() -> None:
        """Test root (a callback keeps `data` a sub-command)."""

    data_cmd.register(app)
    return app


def _broken_tree(make_tree):
    root = make_tree({"a": {"cat": 3, "dog": 2}, "b": {"cat": 2}}, ext="jpg")
    (root / "a" / "dog" / "001.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    (root / "b" / "README.md").write_text("stray")
    return root


def test_check_reports_counts_bad_file_and_missing_class(make_tree):
    root = _broken_tree(make_tree)
    seen = []
    report = check_dataset(root, on_progress=lambda done, total: seen.append((done, total)))
    assert report.counts == {"a": {"cat": 3, "dog": 2}, "b": {"cat": 2, "dog": 0}}
    assert report.totals == {"a": 5, "b": 2}
    assert [p.name for p, _ in report.bad_files] == ["001.jpg"]
    assert report.missing_classes == {"b": ["dog"]}
    assert not report.ok and len(report.problems) == 2
    assert any("README.md" in w for w in report.warnings)
    assert seen[-1] == (7, 7)


def test_check_clean_tree_is_ok(make_tree):
    report = check_dataset(make_tree({"a": {"x": 2}, "b": {"x": 1}}))
    assert report.ok and report.problems == [] and report.bad_files == []


def test_deep_check_finds_truncated_image_that_verify_misses(tmp_path):
    path = tmp_path / "big.jpg"
    Image.effect_noise((256, 256), 60).convert("RGB").save(path, quality=90)
    path.write_bytes(path.read_bytes()[:3000])
    assert verify_image(path, deep=False) is None
    assert verify_image(path, deep=True) is not None


def test_cli_check_exits_nonzero_and_lists_problems(make_tree):
    root = _broken_tree(make_tree)
    result = CliRunner().invoke(_cli(), ["data", "check", str(root)], env={"COLUMNS": "40"})
    assert result.exit_code == 1, result.output
    # The unreadable file's full path on one line, however narrow the terminal (40 columns here).
    bad = str(root / "a" / "dog" / "001.jpg")
    assert any(line.startswith("problem:") and bad in line for line in result.output.splitlines())
    assert "lacks class(es) dog" in result.output
    assert "total" in result.output and "cat" in result.output


def test_cli_check_ok_and_missing_dir(make_tree, tmp_path):
    root = make_tree({"a": {"x": 2}, "b": {"x": 3}})
    ok = CliRunner().invoke(_cli(), ["data", "check", str(root), "--deep"])
    assert ok.exit_code == 0, ok.output
    assert "5 images decoded fully" in ok.output
    missing = CliRunner().invoke(_cli(), ["data", "check", str(tmp_path / "PACS")])
    assert missing.exit_code == 2 and "dgmerge data download PACS" in missing.output
