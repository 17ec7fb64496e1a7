"""`dgmerge train`: config errors are caught before any work, naming the field or folder."""

from typer.testing import CliRunner

from dgmerge.cli.main import app

runner = CliRunner()


def test_train_rejects_unknown_key_before_any_work(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text(f"output_dir: {tmp_path / 'run'}\ntrain:\n  stepz: 3\n")
    result = runner.invoke(app, ["train", str(config)])
    assert result.exit_code == 2
    assert "train.stepz" in result.output
    assert not (tmp_path / "run").exists()


def test_train_reports_missing_dataset_dir(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(f"output_dir: {tmp_path / 'run'}\ndata:\n  root: {tmp_path}\n  dataset: PACS\n")
    result = runner.invoke(app, ["train", str(config)])
    assert result.exit_code == 2
    assert str(tmp_path / "PACS") in result.output
