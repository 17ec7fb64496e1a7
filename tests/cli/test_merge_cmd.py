"""`dgmerge merge` / `dgmerge inspect` through a throwaway typer app (the root app also needs
the other command modules; the merging commands register themselves the same way)."""

import json

import pytest
import torch
import typer
from typer.testing import CliRunner

from dgmerge.cli import merge_cmd
from dgmerge.files import read_metadata, read_state_dict, save_state_dict
from dgmerge.merging import merge
from merging.helpers import finetune, vit_like

app = typer.Typer()


@app.callback()
def _root() -> None:
    """test root"""


merge_cmd.register(app)
runner = CliRunner()


def run(*args):
    result = runner.invoke(app, [str(a) for a in args])
    return result.exit_code, result.output


@pytest.fixture()
def files(tmp_path):
    pre = vit_like(0)
    fts = [finetune(pre, i) for i in range(3)]
    save_state_dict(tmp_path / "pre.safetensors", pre)
    save_state_dict(tmp_path / "a.safetensors", fts[0])
    save_state_dict(tmp_path / "b.pt", fts[1])
    torch.save({"state_dict": {"module." + k: v for k, v in fts[2].items()}, "epoch": 1}, tmp_path / "c.pt")
    return tmp_path, pre, fts


@pytest.mark.parametrize("out_name", ["merged.safetensors", "merged.pt"])
def test_round_trip_matches_the_python_api(files, out_name):
    tmp, pre, fts = files
    code, output = run("merge", "--method", "ties", "--pretrained", tmp / "pre.safetensors", "--models",
                       tmp / "a.safetensors", tmp / "b.pt", tmp / "c.pt", "--out", tmp / out_name,
                       "--set", "keep=0.5", "--set", "scale=0.8")
    assert code == 0, output
    assert "merged 3 models with ties" in output and '"thresholds"' in output
    expected = merge("ties", pre, fts, keep=0.5, scale=0.8)
    got = read_state_dict(tmp / out_name)
    for key in pre:
        assert torch.equal(got[key], expected[key]), key
    if out_name.endswith(".safetensors"):
        meta = read_metadata(tmp / out_name)
        assert meta["dgmerge_method"] == "ties" and json.loads(meta["dgmerge_hparams"]) == {"keep": 0.5, "scale": 0.8}


def test_wrapper_method_with_base_settings_and_hf_directory(files):
    tmp, pre, fts = files
    (tmp / "hf").mkdir()
    save_state_dict(tmp / "hf" / "model.safetensors", pre)
    code, output = run("merge", "-m", "dare", "-p", tmp / "hf", "--models", tmp / "a.safetensors", tmp / "b.pt",
                       "-o", tmp / "d.safetensors", "--set", "drop=0.5", "--set", "base=rhm", "--set", "trim=0.1",
                       "--set", "seed=7")
    assert code == 0, output
    expected = merge("dare", pre, fts[:2], drop=0.5, base="rhm", trim=0.1, seed=7)
    got = read_state_dict(tmp / "d.safetensors")
    assert all(torch.equal(got[k], expected[k]) for k in pre)


def test_refuses_to_overwrite_without_force(files):
    tmp, _, _ = files
    args = ["merge", "--method", "average", "--pretrained", tmp / "pre.safetensors", "--models",
            tmp / "a.safetensors", "--out", tmp / "m.safetensors"]
    assert run(*args)[0] == 0
    code, output = run(*args)
    assert code == 2 and "m.safetensors: already exists; pass --force" in output
    assert run(*args, "--force")[0] == 0


@pytest.mark.parametrize("setup, settings, message", [
    (lambda t: None, ["keep=1.5"], r"ties: keep=1.5 is outside (0, 1]"),
    (lambda t: None, ["keep"], "expected key=value"),
    (lambda t: None, ["keep=abc"], "cannot read 'abc' as float"),
    (lambda t: None, ["nope=1"], "unknown hyperparameter 'nope'"),
    (lambda t: save_state_dict(t / "a.safetensors", {"w": torch.ones(2)}, force=True), [],
     "a.safetensors: key sets differ"),
    (lambda t: save_state_dict(t / "a.safetensors", {**vit_like(0), "cls_token": torch.ones(1, 1, 3)}, force=True),
     [], "a.safetensors: shapes differ from"),
    (lambda t: save_state_dict(t / "a.safetensors",
                               {**vit_like(0), "cls_token": torch.full((1, 1, 8), float("nan"))}, force=True), [],
     "a.safetensors: tensor 'cls_token' contains 8 NaN"),
])
def test_bad_input_is_one_line_with_exit_code_2(files, setup, settings, message):
    tmp, _, _ = files
    setup(tmp)
    sets = [x for s in settings for x in ("--set", s)]
    code, output = run("merge", "--method", "ties", "--pretrained", tmp / "pre.safetensors", "--models",
                       tmp / "a.safetensors", tmp / "b.pt", "--out", tmp / "m.safetensors", *sets)
    assert code == 2
    assert message in output and output.startswith("error: ") and output.count("\n") == 1
    assert not (tmp / "m.safetensors").exists()


def test_missing_models_and_settings_passed_as_models(files):
    tmp, _, _ = files
    code, output = run("merge", "--method", "average", "--pretrained", tmp / "pre.safetensors", "--out", tmp / "m.pt")
    assert code == 2 and "no fine-tuned models given" in output
    code, output = run("merge", "--method", "ties", "--pretrained", tmp / "pre.safetensors", "--models",
                       tmp / "a.safetensors", "keep=0.3", "--out", tmp / "m.pt")
    assert code == 2 and "pass each setting as --set keep=0.3" in output
    code, output = run("merge", "--method", "greedy_soup", "--pretrained", tmp / "pre.safetensors", "--models",
                       tmp / "a.safetensors", "--out", tmp / "m.pt")
    assert code == 2 and "Python API" in output
    code, output = run("merge", "--method", "ties", "--pretrained", tmp / "nothere.pt", "--models",
                       tmp / "a.safetensors", "--out", tmp / "m.pt")
    assert code == 2 and "nothere.pt: no such file" in output


def test_inspect_prints_the_report_and_saves_a_heatmap(files):
    tmp, _, _ = files
    code, output = run("inspect", "--pretrained", tmp / "pre.safetensors", "--models", tmp / "a.safetensors",
                       tmp / "b.pt", tmp / "c.pt", "--heatmap", tmp / "h.png", "--json", tmp / "r.json")
    assert code == 0, output
    assert "pairwise cosine similarity" in output and "blocks.0.attn.qkv.weight" in output
    assert (tmp / "h.png").read_bytes()[:4] == b"\x89PNG"
    report = json.loads((tmp / "r.json").read_text())
    assert report["names"] == ["a", "b", "c"] and len(report["cosine"]) == 3
    code, output = run("inspect", "--pretrained", tmp / "pre.safetensors", "--models", tmp / "a.safetensors",
                       "--heatmap", tmp / "h.jpg")
    assert code == 2 and "PNG" in output


def test_root_app_exposes_merge_and_inspect(files):
    from dgmerge.cli import main

    tmp, pre, fts = files
    result = runner.invoke(main.app, ["merge", "--method", "rhm", "--pretrained", str(tmp / "pre.safetensors"),
                                      "--models", str(tmp / "a.safetensors"), str(tmp / "b.pt"),
                                      "--out", str(tmp / "r.safetensors"), "--set", "trim=0.2", "--quiet"])
    assert result.exit_code == 0, result.output
    expected = merge("rhm", pre, fts[:2], trim=0.2)
    got = read_state_dict(tmp / "r.safetensors")
    assert all(torch.equal(got[k], expected[k]) for k in pre)
