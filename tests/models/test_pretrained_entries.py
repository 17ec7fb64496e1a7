"""Pretrained entries: the TF-MobileNetV2 recipe stated once, applied by the timm loader unless overridden."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file

from dgmerge.config import BackboneConfig, shared_mobilenetv2_config
from dgmerge.models import load_backbone
from dgmerge.models.entries import (PRETRAINED, SHARED_MOBILENETV2, TFLITE_MOBILENETV2, PretrainedEntry,
                                    find_pretrained, pretrained_tags, register_pretrained)

# The recipe every config spelled out before the entry existed.
EXPLICIT_RECIPE = {"model_kwargs": {"pad_type": "same"}, "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5),
                   "image_size": 224}


def test_the_tflite_entry_carries_the_recipe():
    entry = find_pretrained("mobilenetv2_100", "tflite_in1k")
    assert entry is TFLITE_MOBILENETV2 and pretrained_tags("mobilenetv2_100") == ["tflite_in1k"]
    assert (dict(entry.model_kwargs), entry.mean, entry.std, entry.image_size) == tuple(EXPLICIT_RECIPE.values())
    assert entry.file == SHARED_MOBILENETV2
    assert find_pretrained("mobilenetv2_100", None) is None and find_pretrained("resnet18", "tflite_in1k") is None


def test_a_second_different_entry_under_one_name_is_refused():
    register_pretrained(TFLITE_MOBILENETV2)  # the same entry again is harmless
    with pytest.raises(ValueError, match="already registered"):
        register_pretrained(PretrainedEntry(model="mobilenetv2_100", tag="tflite_in1k", image_size=96))
    assert PRETRAINED[("mobilenetv2_100", "tflite_in1k")] is TFLITE_MOBILENETV2


@pytest.fixture(scope="module")
def random_tf_mobilenet(tmp_path_factory) -> Path:
    """A randomly initialised mobilenetv2_100 with "same" padding, saved like shared/'s file."""
    torch.manual_seed(0)
    model = timm.create_model("mobilenetv2_100", pretrained=False, num_classes=1000, pad_type="same")
    path = tmp_path_factory.mktemp("weights") / "mnv2.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def test_the_config_overrides_the_entry_field_by_field(random_tf_mobilenet):
    cfg = BackboneConfig(kind="timm", name="mobilenetv2_100", pretrained="tflite_in1k", checkpoint=random_tf_mobilenet,
                         mean=(0.4, 0.4, 0.4), image_size=96, model_kwargs={"pad_type": ""})
    backbone = load_backbone(cfg)
    assert (backbone.mean, backbone.std, backbone.image_size) == ((0.4, 0.4, 0.4), (0.5, 0.5, 0.5), 96)
    assert type(backbone.encoder.conv_stem).__name__ == "Conv2d"  # timm's symmetric padding, as asked
    by_entry = load_backbone(cfg.model_copy(update={"mean": None, "image_size": None, "model_kwargs": {}}))
    assert (by_entry.mean, by_entry.image_size) == ((0.5, 0.5, 0.5), 224)
    assert type(by_entry.encoder.conv_stem).__name__ == "Conv2dSame"


def test_an_unknown_tag_lists_the_entries_of_the_model():
    with pytest.raises(ValueError, match=r"pretrained entry of mobilenetv2_100 \(tflite_in1k\)"):
        load_backbone(BackboneConfig(kind="timm", name="mobilenetv2_100", pretrained="tflite"))


def test_without_a_checkpoint_the_entry_file_under_shared_is_used(monkeypatch, tmp_path):
    monkeypatch.setenv("DGMERGE_SHARED", str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="nowhere/weights/mobilenetv2_100_imagenet_tflite.safetensors"):
        load_backbone(BackboneConfig(kind="timm", name="mobilenetv2_100", pretrained="tflite_in1k"))


def test_shared_mobilenetv2_config_names_the_entry(tmp_path):
    cfg = shared_mobilenetv2_config(tmp_path / "w.safetensors")
    assert (cfg.kind, cfg.name, cfg.pretrained, cfg.checkpoint) == ("timm", "mobilenetv2_100", "tflite_in1k",
                                                                      tmp_path / "w.safetensors")
    assert cfg.model_kwargs == {} and cfg.mean is cfg.std is cfg.image_size is None


def test_the_entry_loads_the_real_weights_bit_identically_to_the_explicit_recipe(shared_weights, monkeypatch):
    explicit = load_backbone(BackboneConfig(kind="timm", name="mobilenetv2_100", checkpoint=shared_weights,
                                            **EXPLICIT_RECIPE))
    monkeypatch.setenv("DGMERGE_SHARED", str(shared_weights.parents[1]))
    loaded = {
        "entry": load_backbone(BackboneConfig(kind="timm", name="mobilenetv2_100", pretrained="tflite_in1k",
                                              checkpoint=shared_weights)),
        "entry, file from shared/": load_backbone(BackboneConfig(kind="timm", name="mobilenetv2_100",
                                                                 pretrained="tflite_in1k")),
        "shared_mobilenetv2_config": load_backbone(shared_mobilenetv2_config(shared_weights)),
    }
    torch.manual_seed(0)
    images = torch.randn(4, 3, 224, 224)
    photo = Image.new("RGB", (300, 200), (200, 120, 40))
    expected = explicit.encode(images)
    for how, backbone in loaded.items():
        assert (backbone.image_size, backbone.mean, backbone.std, backbone.blocks, backbone.tail) == (
            explicit.image_size, explicit.mean, explicit.std, explicit.blocks, explicit.tail), how
        assert torch.equal(backbone.encode(images), expected), how
        assert torch.equal(backbone.eval_transform(photo), explicit.eval_transform(photo)), how
        state, reference = backbone.encoder.state_dict(), explicit.encoder.state_dict()
        assert state.keys() == reference.keys() and all(torch.equal(state[k], reference[k]) for k in state), how
    # The check can fail: without the recipe's padding the same weights give other features.
    plain = load_backbone(BackboneConfig(kind="timm", name="mobilenetv2_100", checkpoint=shared_weights))
    assert not torch.allclose(plain.encode(images), expected)


def test_a_saved_model_rebuilds_with_its_entrys_recipe_and_no_weights_download(tmp_path, shared_root):
    """architecture_only keeps what the weights need (padding, normalisation) and drops the weights."""
    from dgmerge.config import BackboneConfig, architecture_only

    cfg = BackboneConfig(kind="timm", name="mobilenetv2_100", pretrained="tflite_in1k",
                         checkpoint=tmp_path / "nowhere.safetensors")
    arch = architecture_only(cfg)
    assert arch.checkpoint is None and arch.pretrained is None
    assert arch.model_kwargs == {"pad_type": "same"} and arch.mean == (0.5, 0.5, 0.5) and arch.image_size == 224
    # Explicit settings of the config win over the entry's.
    assert architecture_only(cfg.model_copy(update={"image_size": 192})).image_size == 192
    plain = BackboneConfig(kind="timm", name="mobilenetv2_100")
    assert architecture_only(plain).model_kwargs == {} and architecture_only(plain).mean is None
