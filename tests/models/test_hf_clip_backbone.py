"""transformers CLIP loading from a local save_pretrained directory (tiny random model)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from dgmerge.config import BackboneConfig
from dgmerge.models import ZeroShotHead, load_backbone, trainable_encoder_names


@pytest.fixture(scope="module")
def loaded(tiny_hf_clip):
    directory, reference, _ = tiny_hf_clip
    return load_backbone(BackboneConfig(kind="hf_clip", name=str(directory))), reference


def _image_features(model, images):
    with torch.no_grad():
        return model.visual_projection(model.vision_model(pixel_values=images).pooler_output)


def test_encoder_outputs_projected_image_embeddings(loaded):
    backbone, reference = loaded
    assert backbone.feature_dim == 16 and backbone.image_size == 32
    images = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(backbone.encode(images), _image_features(reference, images))
    # No preprocessor_config.json in the directory: CLIP's default normalisation.
    assert backbone.mean == pytest.approx((0.48145466, 0.4578275, 0.40821073))
    assert backbone.eval_transform(Image.new("RGB", (64, 40))).shape == (3, 32, 32)


def test_only_the_vision_side_trains(loaded):
    backbone, _ = loaded
    names = [n for n, _ in backbone.encoder.named_parameters()]
    assert names and all(n.startswith(("vision_model.", "visual_projection.")) for n in names)
    assert all(p.requires_grad for p in backbone.encoder.parameters())
    last = trainable_encoder_names(backbone.encoder, backbone, "last:1")
    assert "visual_projection.weight" in last and "vision_model.post_layernorm.weight" in last
    assert any(n.startswith("vision_model.encoder.layers.1.") for n in last)
    assert not any(n.startswith(("vision_model.encoder.layers.0.", "vision_model.embeddings.")) for n in last)


def test_text_head_averages_templates_from_the_text_tower(loaded, tiny_hf_clip):
    backbone, reference = loaded
    tokenizer = tiny_hf_clip[2]
    templates = ["a photo of a {}.", "a sketch of a {}."]
    head = backbone.text_head(["big_dog", "cat"], templates)
    assert isinstance(head, ZeroShotHead) and list(head.parameters()) == []
    rows = []
    with torch.no_grad():
        for cls in ("big dog", "cat"):
            batch = tokenizer([t.format(cls) for t in templates], padding=True, return_tensors="pt")
            pooled = reference.text_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).pooler_output
            rows.append(F.normalize(F.normalize(reference.text_projection(pooled), dim=-1).mean(0), dim=-1))
    torch.testing.assert_close(head.class_embeddings, torch.stack(rows))
    torch.testing.assert_close(head.logit_scale, reference.logit_scale.detach())


def test_saved_image_processor_sets_preprocessing(tmp_path, tiny_hf_clip):
    import shutil

    from transformers import CLIPImageProcessor

    directory = tmp_path / "with_processor"
    shutil.copytree(tiny_hf_clip[0], directory)
    CLIPImageProcessor(size={"shortest_edge": 48}, crop_size={"height": 48, "width": 48},
                       image_mean=[0.5, 0.5, 0.5], image_std=[0.25, 0.25, 0.25]).save_pretrained(directory)
    backbone = load_backbone(BackboneConfig(kind="hf_clip", name="local-copy", checkpoint=directory))
    assert (backbone.image_size, backbone.mean, backbone.std) == (48, (0.5,) * 3, (0.25,) * 3)
    override = load_backbone(BackboneConfig(kind="hf_clip", name=str(directory), mean=(0.1, 0.2, 0.3)))
    assert override.mean == (0.1, 0.2, 0.3)


def test_missing_checkpoint_directory_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="no_clip_here"):
        load_backbone(BackboneConfig(kind="hf_clip", name="x", checkpoint=tmp_path / "no_clip_here"))
