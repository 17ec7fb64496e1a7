"""The real CLIP ViT-B/16 architecture (open_clip, random weights: no download) through `dgmerge run` with HAM.

The paper's own setting, shrunk to 2 steps on a few generated images: full fine-tuning of
the visual tower under the frozen text head, SAE + OPA + historical averaging + RHM, on an
explicit `--device cpu` (fp32: CPU bf16 matmuls without native support are several times slower;
bf16 is tested on small models in tests/training/test_precision.py).
"""

import json

import pytest
from typer.testing import CliRunner

from dgmerge.cli.main import app
from dgmerge.data.synthetic import generate_synthetic
from dgmerge.evaluation.results import read_results

pytestmark = pytest.mark.slow


def test_vit_b16_runs_ham_for_two_steps_through_dgmerge_run(tmp_path):
    generate_synthetic(tmp_path / "data", name="Shapes", domains=("solid", "outline", "noisy"),
                       images_per_class=2, size=32)
    config = tmp_path / "vit.yaml"
    config.write_text(json.dumps({
        "output_dir": str(tmp_path / "run"), "seeds": [0], "methods": ["ham"], "save_models": False,
        "data": {"root": str(tmp_path / "data"), "dataset": "Shapes", "test_domains": ["outline"]},
        "backbone": {"kind": "open_clip", "name": "ViT-B-16", "pretrained": None},
        "train": {"steps": 2, "batch_size": 2, "lr": 1e-5, "eval_every": 2, "eval_batch_size": 8,
                  "trainable": "all"},
        "ham": {"opa_weight": 0.5, "merge_hparams": {"trim": 0.4}},
    }))
    result = CliRunner().invoke(app, ["run", str(config), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    rows = read_results(tmp_path / "run" / "results.jsonl")
    assert [r["method"] for r in rows] == ["ham"]
    row = rows[0]
    assert 0.0 <= row["test_acc"] <= 1.0 and 0.0 <= row["val_acc"] <= 1.0
    assert row["hparams"]["backbone"]["name"] == "ViT-B-16"
    assert row["hparams"]["train"]["device"] == "cpu" and row["hparams"]["train"]["trainable"] == "all"
