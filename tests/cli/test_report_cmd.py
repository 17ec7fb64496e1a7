"""`dgmerge report`: tables from results.jsonl, CSV, figures, clear errors."""

import json

from typer.testing import CliRunner

from dgmerge.cli.main import app

runner = CliRunner()


def test_report_prints_table_and_writes_csv(tmp_path):
    path = tmp_path / "results.jsonl"
    rows = [{"dataset": "PACS", "method": "erm", "test_domain": d, "seed": s, "test_acc": a}
            for d, s, a in [("photo", 0, 0.9), ("photo", 1, 0.8), ("sketch", 0, 0.5), ("sketch", 1, 0.7)]]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = runner.invoke(app, ["report", str(tmp_path), "--csv", str(tmp_path / "t.csv")])
    assert result.exit_code == 0, result.output
    assert "| erm | 85.0 ± 5.0 | 60.0 ± 10.0 | 72.5 ± 2.5 |" in result.output
    assert "PACS,erm,Avg,72.5000,2.5000,2" in (tmp_path / "t.csv").read_text()


def test_report_on_missing_file_is_a_clear_error(tmp_path):
    result = runner.invoke(app, ["report", str(tmp_path / "nope.jsonl")])
    assert result.exit_code == 2
    assert "nope.jsonl" in result.output


def test_report_with_figures_writes_the_run_figures(tmp_path):
    rows = [{"dataset": "PACS", "method": "erm", "test_domain": "sketch", "seed": 0, "test_acc": 0.5, "val_acc": 0.7}]
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    log = tmp_path / "logs" / "seed0" / "sketch" / "erm.csv"
    log.parent.mkdir(parents=True)
    log.write_text("step,loss,loss/photo,loss/cartoon\n" + "".join(f"{s},{1 / s},{1 / s},{2 / s}\n" for s in range(1, 6)))
    result = runner.invoke(app, ["report", str(tmp_path), "--figures"])
    assert result.exit_code == 0, result.output
    pngs = list((tmp_path / "figures").glob("loss_curves*.png"))
    assert pngs and pngs[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
