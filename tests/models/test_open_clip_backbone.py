"""open_clip loading from a local checkpoint, on a tiny registered ViT config."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from dgmerge.config import BackboneConfig
from dgmerge.files import ModelFileError, read_state_dict, save_state_dict
from dgmerge.models import ZeroShotHead, load_backbone, trainable_encoder_names


@pytest.fixture(scope="module")
def loaded(tiny_open_clip):
    name, reference, checkpoint = tiny_open_clip
    return load_backbone(BackboneConfig(kind="open_clip", name=name, checkpoint=checkpoint)), reference


def test_encoder_is_the_visual_tower_with_projection(loaded):
    backbone, reference = loaded
    assert backbone.encoder is not reference.visual
    assert backbone.feature_dim == 16 and backbone.image_size == 32
    images = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(backbone.encode(images), reference.encode_image(images))
    # Mean/std and the eval transform come from the model's own preprocess config.
    assert backbone.mean == pytest.approx((0.48145466, 0.4578275, 0.40821073))
    assert backbone.eval_transform(Image.new("RGB", (48, 40))).shape == (3, 32, 32)


def test_structure_and_last_n_include_projection(loaded):
    backbone, _ = loaded
    assert backbone.blocks == ["transformer.resblocks.0", "transformer.resblocks.1"]
    assert backbone.tail == ["ln_post", "proj"]
    names = trainable_encoder_names(backbone.encoder, backbone, "last:1")
    assert "proj" in names and "ln_post.weight" in names
    assert all(n.startswith(("transformer.resblocks.1.", "ln_post.")) or n == "proj" for n in names)
    assert not any(n.startswith("transformer.resblocks.0.") for n in names)


def test_text_head_matches_a_hand_built_zero_shot_classifier(loaded, tiny_open_clip):
    import open_clip

    backbone, reference = loaded
    templates = ["a photo of a {}.", "a drawing of a {}."]
    head = backbone.text_head(["tennis_racket", "dog"], templates)
    assert isinstance(head, ZeroShotHead) and list(head.parameters()) == []
    tokenizer = open_clip.get_tokenizer(tiny_open_clip[0])
    with torch.no_grad():
        rows = []
        for cls in ("tennis racket", "dog"):
            emb = F.normalize(reference.encode_text(tokenizer([t.format(cls) for t in templates])), dim=-1)
            rows.append(F.normalize(emb.mean(0), dim=-1))
        expected = torch.stack(rows)
    torch.testing.assert_close(head.class_embeddings, expected)
    torch.testing.assert_close(head.logit_scale.exp(), reference.logit_scale.exp())
    features = backbone.encode(torch.randn(3, 32, 32).unsqueeze(0))
    torch.testing.assert_close(head(features), head.logit_scale.exp() * F.normalize(features, dim=-1) @ expected.t())


def test_text_tower_is_frozen_and_training_mode_survives_head_building(loaded):
    backbone, _ = loaded
    assert all(p.requires_grad for p in backbone.encoder.parameters())
    backbone.encoder.train()
    backbone.text_head(["a"], ["{}"])
    assert backbone.encoder.training
    backbone.encoder.eval()


def test_pretrained_may_be_a_local_file_and_encoder_round_trips(tmp_path, tiny_open_clip):
    name, reference, checkpoint = tiny_open_clip
    backbone = load_backbone(BackboneConfig(kind="open_clip", name=name, pretrained=str(checkpoint)))
    images = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(backbone.encode(images), reference.encode_image(images))
    # A saved visual tower goes back into a fresh visual tower (what merging writes out).
    path = save_state_dict(tmp_path / "visual.safetensors", backbone.encoder)
    fresh = load_backbone(BackboneConfig(kind="open_clip", name=name, checkpoint=checkpoint)).encoder
    fresh.load_state_dict(read_state_dict(path))
    torch.testing.assert_close(fresh(images), backbone.encode(images))


def test_bad_checkpoint_names_the_file(tmp_path, tiny_open_clip):
    name = tiny_open_clip[0]
    with pytest.raises(FileNotFoundError, match="no_such_clip.pt"):
        load_backbone(BackboneConfig(kind="open_clip", name=name, checkpoint=tmp_path / "no_such_clip.pt"))
    partial = tmp_path / "visual_only.pt"
    torch.save({k: v for k, v in tiny_open_clip[1].state_dict().items() if k.startswith("visual.")}, partial)
    with pytest.raises(ModelFileError, match=r"visual_only\.pt.*missing keys.*text_projection"):
        load_backbone(BackboneConfig(kind="open_clip", name=name, checkpoint=partial))
