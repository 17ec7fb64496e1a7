"""CLIP backbones through the whole experiment: text head from prompts, zero-shot, ERM, merge."""

from pathlib import Path

import pytest

from dgmerge.config import BackboneConfig, DataConfig, ExperimentConfig, MergeSpec, ProbeConfig, TrainConfig
from dgmerge.data.synthetic import generate_synthetic
from dgmerge.evaluation.results import read_results
from dgmerge.pipeline import experiment
from dgmerge.evaluation.saved_models import score_model


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    generate_synthetic(root, name="Shapes", domains=("solid", "outline", "noisy"), images_per_class=3, size=32)
    return root


def run(shapes: Path, out: Path, backbone: BackboneConfig) -> list[dict]:
    cfg = ExperimentConfig(
        output_dir=out, seeds=[0], methods=["zero_shot", "erm", "single_source", "merge"],
        merges=[MergeSpec(method="ties", hparams={"keep": 0.5})],
        data=DataConfig(root=shapes, dataset="Shapes", test_domains=["outline"]),
        backbone=backbone, probe=ProbeConfig(epochs=1),
        train=TrainConfig(steps=2, batch_size=3, lr=1e-4, eval_every=2, trainable="last:1"))
    return experiment.run_experiment(cfg, log=lambda _: None)


def check(rows: list[dict], shapes: Path, out: Path) -> None:
    assert [r["method"] for r in rows] == ["zero_shot", "erm", "source:noisy", "source:solid",
                                           "single_source_mean", "merge:ties"]
    assert rows[0]["head"] == "ZeroShotHead"
    assert rows[0]["hparams"]["backbone"]["templates"]  # prompts change CLIP results: recorded
    # The saved zero-shot model carries its text head as buffers and scores like the run did.
    scores = score_model(out / "models" / "seed0" / "outline" / "zero_shot.safetensors", shapes / "Shapes",
                         ["outline"])
    assert scores["outline"][1] == pytest.approx(rows[0]["test_acc"])
    assert len(read_results(out / "results.jsonl")) == len(rows)


def test_open_clip_checkpoint_end_to_end(shapes, tmp_path, tiny_open_clip):
    name, _, checkpoint = tiny_open_clip
    out = tmp_path / "oc"
    rows = run(shapes, out, BackboneConfig(kind="open_clip", name=name, checkpoint=checkpoint,
                                           templates=["a photo of a {}.", "a drawing of a {}."]))
    check(rows, shapes, out)


def test_hf_clip_directory_end_to_end(shapes, tmp_path, tiny_hf_clip):
    directory, _, _ = tiny_hf_clip
    out = tmp_path / "hf"
    rows = run(shapes, out, BackboneConfig(kind="hf_clip", name=str(directory)))
    check(rows, shapes, out)
