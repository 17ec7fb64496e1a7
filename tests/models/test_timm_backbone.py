"""timm encoders loaded from local weight files, and ../shared's real ImageNet MobileNetV2."""

from __future__ import annotations


import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file

from dgmerge.config import BackboneConfig, shared_mobilenetv2_config
from dgmerge.files import ModelFileError, read_state_dict
from dgmerge.models import Classifier, load_backbone, set_trainable, trainable_encoder_names


def _full_model(name: str, **kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False, num_classes=7, **kwargs).eval()


def test_resnet_safetensors_checkpoint_drops_classifier_and_matches_pooled_features(tmp_path):
    full = _full_model("resnet18")
    path = tmp_path / "resnet18.safetensors"
    save_file({k: v.contiguous() for k, v in full.state_dict().items()}, str(path))  # includes fc.*
    backbone = load_backbone(BackboneConfig(kind="timm", name="resnet18", checkpoint=path, image_size=64))
    assert backbone.blocks == ["layer1", "layer2", "layer3", "layer4"] and backbone.tail == []
    assert backbone.feature_dim == 512 and backbone.image_size == 64
    images = torch.randn(2, 3, 64, 64)
    expected = full.forward_head(full.forward_features(images), pre_logits=True)
    torch.testing.assert_close(backbone.encode(images), expected)
    assert backbone.eval_transform(Image.new("RGB", (90, 70))).shape == (3, 64, 64)
    assert backbone.mean == timm.get_pretrained_cfg("resnet18").mean  # timm's own when not overridden


def test_mobilenet_torch_checkpoint_with_model_kwargs(tmp_path):
    full = _full_model("mobilenetv2_050", pad_type="same")
    path = tmp_path / "mnv2.pt"
    torch.save({"state_dict": full.state_dict()}, path)
    cfg = BackboneConfig(kind="timm", name="mobilenetv2_050", checkpoint=path, model_kwargs={"pad_type": "same"},
                         mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    backbone = load_backbone(cfg)
    assert backbone.blocks == [f"blocks.{i}" for i in range(7)] and backbone.tail == ["conv_head", "bn2"]
    assert backbone.mean == (0.5, 0.5, 0.5)
    images = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(backbone.encode(images),
                               full.forward_head(full.forward_features(images), pre_logits=True))


def test_vit_blocks_and_final_norm_tail():
    cfg = BackboneConfig(kind="timm", name="vit_tiny_patch16_224", model_kwargs={"img_size": 32, "depth": 3})
    backbone = load_backbone(cfg)
    assert backbone.blocks == ["blocks.0", "blocks.1", "blocks.2"] and backbone.tail == ["norm"]
    assert backbone.encode(torch.randn(1, 3, 32, 32)).shape == (1, 192)


def test_bad_checkpoints_name_the_file(tmp_path):
    missing = tmp_path / "does_not_exist.safetensors"
    with pytest.raises(FileNotFoundError, match="does_not_exist.safetensors"):
        load_backbone(BackboneConfig(kind="timm", name="resnet18", checkpoint=missing))
    # Another architecture's weights: the error names the file and the offending keys.
    other = tmp_path / "mobilenet_for_resnet.safetensors"
    save_file({k: v.contiguous() for k, v in _full_model("mobilenetv2_050").state_dict().items()}, str(other))
    with pytest.raises(ModelFileError, match=r"mobilenet_for_resnet\.safetensors.*missing keys.*layer1"):
        load_backbone(BackboneConfig(kind="timm", name="resnet18", checkpoint=other))
    with pytest.raises(ValueError, match="neither 'hub', an entry nor an existing file"):
        load_backbone(BackboneConfig(kind="timm", name="resnet18", pretrained="imagenet"))


def test_pretrained_may_name_a_local_file(tmp_path):
    full = _full_model("resnet18")
    path = tmp_path / "r18.pt"
    torch.save(full.state_dict(), path)
    backbone = load_backbone(BackboneConfig(kind="timm", name="resnet18", pretrained=str(path)))
    images = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(backbone.encode(images),
                               full.forward_head(full.forward_features(images), pre_logits=True))


# ImageNet-1k class ids: dogs are 151..268; elephants 101 (tusker), 385, 386; guitars 402, 546.
PACS_EXPECTATIONS = {"dog": set(range(151, 269)), "elephant": {101, 385, 386}, "guitar": {402, 546}}


def test_shared_mobilenetv2_loads_and_predicts_sensibly(shared_weights):
    backbone = load_backbone(shared_mobilenetv2_config(shared_weights))
    assert (backbone.feature_dim, backbone.image_size, backbone.mean) == (1280, 224, (0.5, 0.5, 0.5))
    # The encoder dropped the ImageNet classifier; apply it by hand to check the features mean something.
    full = read_state_dict(shared_weights)
    weight, bias = full["classifier.weight"], full["classifier.bias"]
    photos = shared_weights.parents[1] / "data" / "PACS" / "photo"
    images, wanted = [], []
    for cls, ids in PACS_EXPECTATIONS.items():
        for path in sorted((photos / cls).glob("*.jpg"))[:5]:
            images.append(backbone.eval_transform(Image.open(path)))
            wanted.append(ids)
    if not images:
        # No photos to look at: at least the features of a neutral image must be finite.
        images = [backbone.eval_transform(Image.new("RGB", (224, 224), (120, 110, 100)))]
    features = backbone.encode(torch.stack(images))
    assert features.shape == (len(images), 1280) and torch.isfinite(features).all()
    if wanted:
        predicted = (features @ weight.t() + bias).argmax(dim=1).tolist()
        hits = sum(p in ids for p, ids in zip(predicted, wanted))
        assert hits >= 0.7 * len(wanted), f"ImageNet predictions {predicted} look wrong"


def test_shared_mobilenetv2_last_1_trains_blocks_6_and_head_conv(shared_weights):
    backbone = load_backbone(shared_mobilenetv2_config(shared_weights))
    names = trainable_encoder_names(backbone.encoder, backbone, "last:1")
    assert names and {n.split(".")[0] for n in names} == {"blocks", "conv_head", "bn2"}
    assert all(n.startswith(("blocks.6.", "conv_head.", "bn2.")) for n in names)
    model = Classifier(backbone.encoder, torch.nn.Linear(1280, 3))
    trainable = set_trainable(model, backbone, "last:1")
    assert trainable == [f"encoder.{n}" for n in names]
