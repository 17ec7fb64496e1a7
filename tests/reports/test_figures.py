"""Report figures: loss curves, HAM diagnostics, sensitivity, ablation table, t-SNE, `dgmerge figures`.

Inputs are built by hand (result rows, CSV logs, two tiny saved classifiers) so the file runs in seconds.
"""

from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path

import numpy as np
import pytest
import torch
import typer
from typer.testing import CliRunner

from dgmerge.cli import figures_cmd
from dgmerge.config import BackboneConfig
from dgmerge.data.synthetic import generate_synthetic
from dgmerge.models import load_backbone
from dgmerge.models.classifier import Classifier
from dgmerge.models.heads import LinearHead
from dgmerge.files import save_model
from dgmerge.reports.ablations import ablation_markdown, variant_label
from dgmerge.reports.figures import (
    ham_diagnostics,
    lookup,
    loss_curves,
    plot_sensitivity,
    running_mean,
    sensitivity,
)
from dgmerge.reports.run_figures import write_run_figures

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
DOMAINS = ("solid", "outline", "noisy")


def assert_png(path: Path) -> None:
    data = Path(path).read_bytes()
    assert len(data) > 1000 and data[:8] == PNG_MAGIC


def write_csv(path: Path, records: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = list(dict.fromkeys(k for r in records for k in r))
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(records)
    return path


def erm_log(path: Path, steps: int = 12) -> Path:
    records = []
    for step in range(1, steps + 1):
        rec = {"step": step, "loss": 1.0 / step, "lr": 1e-4}
        rec.update({f"loss/{d}": (i + 1) / step for i, d in enumerate(("noisy", "outline"))})
        if step % 4 == 0:  # validation only every few steps: blank cells elsewhere
            rec.update({"val/noisy": 0.5, "val/outline": 0.6, "val_acc": 0.55})
        records.append(rec)
    return write_csv(path, records)


def ham_log(path: Path, steps: int = 8) -> Path:
    records = []
    for step in range(1, steps + 1):
        rec = {"step": step, "sign_conflict": 0.5 - 0.01 * step}
        for src, other in (("noisy", "outline"), ("outline", "noisy")):
            rec.update({f"tau/{src}": 0.6 + 0.01 * step, f"sign_conflict/{src}": 0.5, f"loss_ce/{src}": 1.0, f"loss_sign/{src}": 0.1,
                        f"borrow/{src}<-{other}": step % 3})
        records.append(rec)
    return write_csv(path, records)


def row(method: str, domain: str, seed: int, acc: float, val: float | None = None, **extra) -> dict:
    r = {"dataset": "Shapes", "test_domain": domain, "seed": seed, "method": method,
         "hparams": {"train": {"lr": 1e-4}}, "test_acc": acc, "val_acc": val if val is not None else float("nan")}
    r.update(extra)
    return r


def ham_row(domain: str, seed: int, acc: float, val: float, **ham) -> dict:
    settings = {"sae": True, "opa": True, "opa_weight": 0.1, "historical": "beta", "merge_method": "rhm",
                "merge_hparams": {}, **ham}
    r = row("ham", domain, seed, acc, val)
    r["hparams"]["ham"] = settings
    return r


# ----------------------------------------------------------------------------- curves

def test_running_mean_is_trailing_and_ignores_nan():
    out = running_mean([1.0, 3.0, np.nan, 5.0, 7.0], 2)
    assert np.allclose(out, [1.0, 2.0, 3.0, 5.0, 6.0])
    assert np.allclose(running_mean([1.0, 2.0], 1), [1.0, 2.0])


def test_loss_curves_draws_one_line_per_domain_and_refuses_overwrite(tmp_path):
    log = erm_log(tmp_path / "erm.csv")
    out = tmp_path / "fig" / "loss.png"
    plotted = loss_curves(log, out, smooth=3)
    assert_png(out)
    assert len(plotted.figure.axes[0].get_lines()) == 2
    steps, values = plotted.data["curves"]["outline"]
    assert list(steps) == list(range(1, 13))
    assert values[2] == pytest.approx(statistics.fmean([2 / 1, 2 / 2, 2 / 3]))
    before = out.read_bytes()
    with pytest.raises(FileExistsError, match="force"):
        loss_curves(log, out)
    assert out.read_bytes() == before
    loss_curves(log, out, smooth=1, force=True)
    assert out.read_bytes() != before
    assert not [p for p in out.parent.iterdir() if p.name.endswith(".tmp")]


def test_loss_curves_missing_or_wrong_log(tmp_path):
    with pytest.raises(FileNotFoundError):
        loss_curves(tmp_path / "nope.csv", tmp_path / "x.png")
    bad = write_csv(tmp_path / "ham.csv", [{"step": 1, "tau/a": 0.5}])
    with pytest.raises(ValueError, match="loss/"):
        loss_curves(bad, tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_ham_diagnostics_panels(tmp_path):
    out = tmp_path / "ham.png"
    plotted = ham_diagnostics(ham_log(tmp_path / "ham.csv"), out)
    assert_png(out)
    assert sorted(plotted.data["tau"]) == ["noisy", "outline"]
    assert sorted(plotted.data["borrow"]) == ["noisy<-outline", "outline<-noisy"]
    assert [len(ax.get_lines()) for ax in plotted.figure.axes] == [2, 2, 3]
    assert plotted.data["sign_conflict"]["mean"][1][0] == pytest.approx(0.49)


# ----------------------------------------------------------------------------- sensitivity

def lambda_rows() -> list[dict]:
    rows = []
    for lam, base in ((0.1, 0.50), (0.5, 0.60), (1.0, 0.55)):
        for seed, shift in ((0, 0.0), (1, 0.04)):
            for j, domain in enumerate(DOMAINS):
                rows.append(ham_row(domain, seed, base + shift + 0.01 * j, 0.9 - 0.1 * lam, opa_weight=lam))
    rows.append(row("erm", "solid", 0, 0.99, 0.99))  # another method: filtered out
    return rows


def test_sensitivity_means_and_stds_match_hand_computation(tmp_path):
    rows = lambda_rows()
    # A rerun of (λ=0.5, solid, seed 0) replaces the earlier row, as in reports.table.
    rows.append(ham_row("solid", 0, 0.30, 0.85, opa_weight=0.5))
    points = sensitivity(rows, "hparams.ham.opa_weight", "ham")
    test = points["test_acc"]
    assert [p.value for p in test] == [0.1, 0.5, 1.0]
    # λ=0.1: seed means 100*(0.50+0.01) and 100*(0.54+0.01) -> mean 53, pstdev 2.
    assert test[0].mean == pytest.approx(53.0) and test[0].std == pytest.approx(2.0) and test[0].n_seeds == 2
    seed0 = statistics.fmean([30.0, 61.0, 62.0])
    seed1 = statistics.fmean([64.0, 65.0, 66.0])
    assert test[1].mean == pytest.approx((seed0 + seed1) / 2)
    assert test[1].std == pytest.approx(statistics.pstdev([seed0, seed1]))
    val = points["val_acc"]
    assert val[2].mean == pytest.approx(80.0) and val[2].std == pytest.approx(0.0)

    out = tmp_path / "sens.png"
    plotted = plot_sensitivity(points, out, "λ")
    assert_png(out)
    lines = plotted.figure.axes[0].get_lines()
    assert any(list(line.get_ydata()) == pytest.approx([p.mean for p in test]) for line in lines)
    with pytest.raises(FileExistsError):
        plot_sensitivity(points, out, "λ")


def test_sensitivity_paths_filters_and_incomplete_seeds():
    rows = [row("merge:rhm_a", d, 0, 0.4, merge_hparams={"trim": 0.2}, merge_method="rhm") for d in DOMAINS]
    rows += [row("merge:rhm_b", d, 0, 0.7, merge_hparams={"trim": 0.8}, merge_method="rhm") for d in DOMAINS]
    rows += [row("merge:rhm_b", "solid", 1, 0.1, merge_hparams={"trim": 0.8}, merge_method="rhm")]  # seed 1 partial
    rows += [row("merge:ties", d, 0, 0.9, merge_hparams={"keep": 0.2}) for d in DOMAINS]
    points = sensitivity(rows, ("merge_hparams.trim", "hparams.ham.merge_hparams.trim"), "merge:rhm*")
    assert [(p.value, p.mean, p.n_seeds) for p in points["test_acc"]] == [(0.2, 40.0, 1), (0.8, 70.0, 1)]
    assert "val_acc" not in points  # all NaN
    by_predicate = sensitivity(rows, "merge_hparams.trim", lambda r: r.get("merge_method") == "rhm")
    assert by_predicate["test_acc"] == points["test_acc"]
    assert sensitivity(rows, "hparams.ham.opa_weight") == {}
    assert lookup(rows[0], "merge_hparams.trim") == 0.2 and lookup(rows[0], "a.b") is None
    with pytest.raises(ValueError, match="no sensitivity points"):
        plot_sensitivity({}, Path("unused.png"), "r")


# ----------------------------------------------------------------------------- ablations

def test_ablation_labels_and_table():
    rows = [ham_row(d, s, 0.6, 0.8) for d in DOMAINS for s in (0, 1)]
    rows += [ham_row(d, s, 0.5, 0.8, sae=False) for d in DOMAINS for s in (0, 1)]
    rows += [ham_row(d, 0, 0.4, 0.8, historical="none", merge_hparams={"trim": 0.4}) for d in DOMAINS]
    rows += [row("erm", d, 0, 0.3) for d in DOMAINS]
    assert variant_label(rows[0]) == "ham"
    assert variant_label(rows[6]) == "ham w/o SAE"
    assert variant_label(rows[12]) == "ham historical=none trim=0.4"
    assert variant_label({**rows[0], "label": "HAM full"}) == "HAM full"
    md = ablation_markdown(rows)
    assert "| ham w/o SAE | 50.0 ± 0.0 | 50.0 ± 0.0 | 50.0 ± 0.0 | 50.0 ± 0.0 |" in md
    assert "erm" not in md
    assert "| erm |" in ablation_markdown(rows, methods=("ham", "erm"))


# ----------------------------------------------------------------------------- t-SNE and the CLI

def save_tiny_model(path: Path, seed: int, classes: list[str], dataset: str, domain: str, method: str) -> Path:
    torch.manual_seed(seed)
    cfg = BackboneConfig(kind="tiny_cnn", name="tiny")
    backbone = load_backbone(cfg)
    model = Classifier(backbone.encoder, LinearHead(backbone.feature_dim, len(classes)))
    meta = {"method": method, "dataset": dataset, "test_domain": domain, "seed": 0, "classes": classes,
            "backbone": cfg.model_dump(mode="json"), "head": "LinearHead"}
    return save_model(path, model, meta)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A run directory like experiment.py writes, at toy size: rows, logs and two saved models."""
    root = tmp_path_factory.mktemp("run")
    data = generate_synthetic(root / "data", name="Shapes", domains=DOMAINS, images_per_class=3, size=32)
    classes = sorted(p.name for p in (data / "solid").iterdir())
    cell = root / "models" / "seed0" / "noisy"
    for i, method in enumerate(("zero_shot", "ham")):
        save_tiny_model(cell / f"{method}.safetensors", i, classes, "Shapes", "noisy", method)
    erm_log(root / "logs" / "seed0" / "noisy" / "erm.csv")
    rows = lambda_rows()
    (root / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def test_tsne_grid_of_two_saved_models(run_dir, tmp_path):
    pytest.importorskip("sklearn")
    from dgmerge.reports.tsne import tsne_figure

    cell = run_dir / "models" / "seed0" / "noisy"
    out = tmp_path / "tsne.png"
    plotted = tsne_figure([cell / "zero_shot.safetensors", cell / "ham.safetensors"], run_dir / "data" / "Shapes",
                          out, target_domain="noisy", max_images=8, max_iter=250)
    assert_png(out)
    embeddings = plotted.data["embeddings"]
    assert [e.name for e in embeddings] == ["zero_shot", "ham"]
    assert all(e.points.shape == (24, 2) for e in embeddings)  # 8 images × 3 domains
    assert len(plotted.figure.axes) == 4
    # Each panel shows every image once: per class on the left, per domain on the right.
    assert sum(len(c.get_offsets()) for c in plotted.figure.axes[0].collections) == 24
    assert len(plotted.figure.axes[1].collections) == 3
    with pytest.raises(FileExistsError):
        tsne_figure([cell / "zero_shot.safetensors"], run_dir / "data" / "Shapes", out)


def test_write_run_figures_writes_what_it_can_and_notes_the_rest(run_dir, tmp_path):
    out = tmp_path / "figs"
    report = write_run_figures(run_dir, out, tsne=False, log=lambda _: None)
    names = sorted(p.name for p in report.written)
    assert names == ["loss_curves_seed0_noisy.png", "report.md", "sensitivity_lambda_Shapes.png"]
    for path in report.written:
        if path.suffix == ".png":
            assert_png(path)
    notes = "\n".join(report.notes)
    assert "ham.csv" in notes and "sensitivity_r_ham" in notes
    text = (out / "report.md").read_text()
    assert "| ham |" in text and "![sensitivity_lambda_Shapes](sensitivity_lambda_Shapes.png)" in text
    again = write_run_figures(run_dir, out, tsne=False, log=lambda _: None)
    assert again.written == [] and sum("kept existing" in n for n in again.notes) == 3
    empty = tmp_path / "empty_run"
    empty.mkdir()
    bare = write_run_figures(empty, tsne=False, log=lambda _: None)
    assert bare.written == [] and any("no results file" in n for n in bare.notes)


def test_figures_command(run_dir, tmp_path):
    pytest.importorskip("sklearn")
    app = typer.Typer()
    figures_cmd.register(app)
    app.command("noop")(lambda: None)  # two commands, so `figures` is a real subcommand
    out = tmp_path / "cli"
    result = CliRunner().invoke(app, ["figures", str(run_dir), "--out", str(out), "--max-images", "5"])
    assert result.exit_code == 0, result.output
    assert "tsne_seed0_noisy.png" in result.output and "note: skipped HAM diagnostics" in result.output
    assert_png(out / "tsne_seed0_noisy.png")
    rerun = CliRunner().invoke(app, ["figures", str(run_dir), "--out", str(out), "--no-tsne", "--force"])
    assert rerun.exit_code == 0 and "wrote 3 file(s)" in rerun.output
    missing = CliRunner().invoke(app, ["figures", str(tmp_path / "nope")])
    assert missing.exit_code == 2 and "no run directory" in missing.output


def test_lambda_sensitivity_takes_ham_and_lambda_only_variants():
    from dgmerge.reports.figures import sensitivity
    from dgmerge.reports.run_figures import SENSITIVITIES

    def row(method, lam, acc, variant=None):
        r = {"method": method, "test_domain": "d", "seed": 0, "test_acc": acc, "val_acc": acc,
             "hparams": {"ham": {"opa_weight": lam}}}
        return {**r, "variant": {"label": method[4:], "set": variant}} if variant is not None else r

    rows = [row("ham", 0.1, 0.5), row("ham:lam1", 1.0, 0.7, {"opa_weight": 1.0}),
            # Same λ as HAM but without SAE: must not overwrite HAM's point at λ = 0.1.
            row("ham:no-sae", 0.1, 0.1, {"sae": False})]
    _, _, keep, paths = SENSITIVITIES[0]
    points = sensitivity(rows, paths, keep)["test_acc"]
    assert [(p.value, round(p.mean, 6)) for p in points] == [(0.1, 50.0), (1.0, 70.0)]
