"""`dgmerge run`: config errors are caught before any work, naming the field or folder."""

from typer.testing import CliRunner

from dgmerge.cli.main import app

runner = CliRunner()


def test_run_rejects_unknown_key_before_any_work(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text(f"output_dir: {tmp_path / 'run'}\ntrain:\n  stepz: 3\n")
    result = runner.invoke(app, ["run", str(config)])
    assert result.exit_code == 2
    assert "train.stepz" in result.output
    assert not (tmp_path / "run").exists()


def test_run_reports_missing_dataset_dir(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(f"output_dir: {tmp_path / 'run'}\ndata:\n  root: {tmp_path}\n  dataset: PACS\n")
    result = runner.invoke(app, ["run", str(config)])
    assert result.exit_code == 2
    assert str(tmp_path / "PACS") in result.output


def test_run_rejects_an_unregistered_method_naming_the_registered_ones(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(f"output_dir: {tmp_path / 'run'}\nmethods: [erm, ermm]\n")
    result = runner.invoke(app, ["run", str(config)])
    assert result.exit_code == 2
    assert "methods: unknown experiment method 'ermm'; registered:" in result.output
    assert "single_source" in result.output and "gating" in result.output
    assert not (tmp_path / "run").exists()


def test_train_is_the_former_name_of_run(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text(f"output_dir: {tmp_path / 'run'}\ntrain:\n  stepz: 3\n")
    result = runner.invoke(app, ["train", str(config)])
    assert result.exit_code == 2 and "train.stepz" in result.output
    listed = [line.split()[1] for line in runner.invoke(app, ["--help"]).output.splitlines()
              if line.startswith("│ ") and len(line.split()) > 1]
    assert "run" in listed and "train" not in listed


def test_methods_lists_both_registries():
    result = runner.invoke(app, ["methods"])
    assert result.exit_code == 0
    text = result.output
    for name in ("linear_probe", "erm", "erm_ma", "swad", "diwa", "single_source", "merge", "ham", "ham_variants",
                 "gating"):
        assert f"\n  {name} " in text
    # The weight-averaging methods come right after erm, whose run they share, with their settings.
    experiments = text.split("Merge methods")[0]
    assert experiments.index("\n  erm ") < experiments.index("\n  erm_ma ") < experiments.index("\n  swad ") \
        < experiments.index("\n  diwa ") < experiments.index("\n  single_source ")
    assert "ma.start_step" in experiments and "swad.tolerance_ratio" in experiments and "diwa.space" in experiments
    assert "also: zero_shot" in text
    for name in ("ties", "rhm", "regmean"):
        assert f"\n  {name} " in text
    assert "conv1x1='matrix'" in text
    assert "\n  gating " in text.split("Merges of whole model files")[1] and "--gate" in text


def test_run_on_a_directory_another_run_holds_is_refused(tmp_path):
    import subprocess
    import sys

    hold = ("import sys, time; from pathlib import Path; from dgmerge.pipeline.run_lock import run_lock\n"
            "with run_lock(Path(sys.argv[1]), 'dgmerge run'):\n    print('held', flush=True); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", hold, str(tmp_path / "run")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        config = tmp_path / "c.yaml"
        config.write_text(f"output_dir: {tmp_path / 'run'}\ndata:\n  root: {tmp_path}\n  dataset: PACS\n")
        result = runner.invoke(app, ["run", str(config)])
        assert result.exit_code == 2
        assert f"in use by another run (pid {holder.pid}, `dgmerge run`" in result.output
    finally:
        holder.kill()
        holder.wait()
