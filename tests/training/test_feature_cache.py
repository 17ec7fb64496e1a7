"""Training on cached prefix activations gives the same models as training on images."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dgmerge.config import (
    BackboneConfig,
    ExperimentConfig,
)
from dgmerge.evaluation.results import read_results
from dgmerge.models import load_backbone
from dgmerge.pipeline import experiment
from dgmerge.evaluation.saved_models import score_model

from tiny import tiny_experiment


def config(root: Path, out: Path, cache: str) -> ExperimentConfig:
    return tiny_experiment(root, out, methods=["zero_shot", "erm", "merge"], test_domains=["noisy"],
                           train={"steps": 4, "lr": 1e-2, "trainable": "last:2", "feature_cache": cache})


def test_cached_run_equals_uncached_run(tiny_shapes, tmp_path):
    plain = experiment.run_experiment(config(tiny_shapes, tmp_path / "plain", "off"), log=lambda _: None)
    cached = experiment.run_experiment(config(tiny_shapes, tmp_path / "cached", "disk"), log=lambda _: None)
    assert [r["method"] for r in plain] == [r["method"] for r in cached]
    for a, b in zip(plain, cached):
        assert a["test_acc"] == pytest.approx(b["test_acc"]) and a["val_acc"] == pytest.approx(b["val_acc"])
    for method in ("erm", "merge_average"):

        wa = load_file(str(tmp_path / "plain" / "models" / "seed0" / "noisy" / f"{method}.safetensors"))
        wb = load_file(str(tmp_path / "cached" / "models" / "seed0" / "noisy" / f"{method}.safetensors"))
        for key in wa:
            torch.testing.assert_close(wa[key], wb[key], rtol=1e-4, atol=1e-5)
    # One file per domain (2 sources + the test domain), shared by every split and seed.
    assert len(list((tmp_path / "cached" / "feature_cache").glob("*.safetensors"))) == 3
    # Another seed splits differently but reads the same per-domain files.
    again = config(tiny_shapes, tmp_path / "cached", "disk")
    again.seeds = [1]
    experiment.run_experiment(again, log=lambda _: None)
    assert len(list((tmp_path / "cached" / "feature_cache").glob("*.safetensors"))) == 3
    # A model trained on the cache is a normal model: it scores images as its row says.
    scores = score_model(tmp_path / "cached" / "models" / "seed0" / "noisy" / "erm.safetensors",
                         tiny_shapes / "Shapes", ["noisy"])
    erm = next(r for r in read_results(tmp_path / "cached" / "results.jsonl") if r["method"] == "erm")
    assert scores["noisy"][1] == pytest.approx(erm["test_acc"])


def test_cached_activations_are_reused_from_disk_and_selected_by_sample(tmp_path):
    from dgmerge.models.stages import Cut
    from dgmerge.training.feature_cache import ActivationDataset, cached_activations

    class Images(torch.utils.data.Dataset):
        samples = [(f"img{i}.png", i % 2) for i in range(5)]

        def __len__(self):
            return 5

        def __getitem__(self, i):
            return torch.full((3, 32, 32), float(i)), i % 2

    encoder = load_backbone(BackboneConfig(kind="tiny_cnn", name="tiny", image_size=32)).encoder
    calls = []
    encoder.blocks[0].register_forward_hook(lambda *_: calls.append(1))
    cut = Cut("blocks.2", 32)
    first = cached_activations(encoder, cut, Images(), key="k", cache_dir=tmp_path, dtype="float16", batch_size=2)
    assert len(calls) == 3 and (tmp_path / "k.safetensors").is_file()
    again = cached_activations(encoder, cut, Images(), key="k", cache_dir=tmp_path, dtype="float16")
    assert len(calls) == 3  # read from disk: the prefix did not run again
    assert again.activations.dtype == torch.float16 and again[0][0].dtype == torch.float32
    torch.testing.assert_close(again.activations, first.activations)
    picked = again.select([("img3.png", 1), ("img0.png", 0)])
    assert isinstance(picked, ActivationDataset) and picked.samples == [("img3.png", 1), ("img0.png", 0)]
    torch.testing.assert_close(picked.activations[0], first.activations[3])
    with pytest.raises(KeyError, match="img9.png"):
        again.select([("img9.png", 0)])
