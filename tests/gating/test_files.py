"""`dgmerge merge --method gating` on tiny_cnn files: the written model reloads and matches the in-memory one."""

from __future__ import annotations

import copy

import pytest
import torch
from typer.testing import CliRunner

from dgmerge.cli.main import app
from dgmerge.config import BackboneConfig
from dgmerge.evaluation.saved_models import load_model
from dgmerge.files import save_model
from dgmerge.gating.artifacts import save_gate
from dgmerge.gating.files import merge_gating_files, parse_gating_settings
from dgmerge.gating.gate import new_gate
from dgmerge.gating.gated_model import GatedClassifier
from dgmerge.merging.validate import MergeError
from dgmerge.models import load_backbone
from dgmerge.models.classifier import Classifier
from dgmerge.models.heads import LinearHead
from dgmerge.models.stages import Cut

CFG = BackboneConfig(kind="tiny_cnn", name="micro", image_size=16)


@pytest.fixture
def files(tmp_path):
    backbone = load_backbone(CFG)
    meta = {"backbone": CFG.model_dump(mode="json"), "head": "LinearHead"}
    theta0 = Classifier(backbone.encoder, LinearHead(backbone.feature_dim, 3)).eval()
    save_model(tmp_path / "zero_shot.safetensors", theta0, {**meta, "classes": ["a", "b", "c"]})
    paths = []
    for i, classes in enumerate([["a", "b", "c"], ["x", "y"]]):
        expert = copy.deepcopy(theta0)
        expert.head = LinearHead(backbone.feature_dim, len(classes))
        gen = torch.Generator().manual_seed(i)
        with torch.no_grad():
            for name, p in expert.named_parameters():
                if name.startswith(("encoder.blocks.2", "encoder.blocks.3")):
                    p.add_(0.3 * torch.randn(p.shape, generator=gen))
        paths.append(save_model(tmp_path / f"expert{i}.safetensors", expert, {**meta, "classes": classes}))
    gate = new_gate(backbone.encoder, backbone.feature_dim, 2, Cut("blocks.2", 16), trainable=[])
    save_gate(tmp_path / "gate.safetensors", gate, CFG, ["abc", "xy"], 0.15)
    return tmp_path, paths


def test_gating_merge_file_reloads_for_evaluate(files):
    folder, paths = files
    out = folder / "gated.safetensors"
    summary = merge_gating_files(folder / "zero_shot.safetensors", paths, folder / "gate.safetensors", out,
                                 **parse_gating_settings(["m=2", "mode=batch"]))
    assert len(summary["chosen"]) == 2 and summary["tasks"] == ["abc", "xy"]
    model, meta, _ = load_model(out)
    assert isinstance(model, GatedClassifier) and meta["method"] == "gating"
    assert model.classes == ["a", "b", "c", "x", "y"]
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        probs = model.gate_probs(x)
        logits = model(x)
        expert1, _, _ = load_model(paths[1])
        onehot = torch.tensor([[0.0, 1.0]] * 4)
        # One-hot on expert 1: its weights in the gated block, its 2-way head in the union's x, y slots.
        assert torch.equal(model(x, probs=onehot)[:, 3:], expert1(x))
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(4))
    assert torch.isinf(logits).sum(dim=1).tolist() == [2 if p[0] >= p[1] else 3 for p in probs.tolist()]
    with pytest.raises(MergeError, match="--force"):
        merge_gating_files(folder / "zero_shot.safetensors", paths, folder / "gate.safetensors", out,
                           **parse_gating_settings([]))


def test_gating_settings_and_cli_errors(files):
    folder, paths = files
    with pytest.raises(MergeError, match="base"):
        parse_gating_settings(["base=ties"])
    with pytest.raises(MergeError, match="m must be a int"):
        parse_gating_settings(["m=three"])
    with pytest.raises(MergeError, match="--grams"):
        merge_gating_files(folder / "zero_shot.safetensors", paths, folder / "gate.safetensors",
                           folder / "r.safetensors", **parse_gating_settings(["base=regmean"]))
    runner = CliRunner()
    result = runner.invoke(app, ["merge", "--method", "gating", "--pretrained", str(folder / "zero_shot.safetensors"),
                                 "--out", str(folder / "o.safetensors"), "--models", *map(str, paths)])
    assert result.exit_code == 2 and "--gate" in result.output
    result = runner.invoke(app, ["merge", "--method", "gating", "--pretrained", str(folder / "zero_shot.safetensors"),
                                 "--gate", str(folder / "gate.safetensors"), "--set", "m=2",
                                 "--out", str(folder / "o.safetensors"), "--models", str(paths[0])])
    assert result.exit_code == 2 and "2 tasks" in result.output
