"""Cutting an encoder at a block: capture + run_from must equal the full forward."""

import pytest
import timm
import torch

from dgmerge.config import BackboneConfig
from dgmerge.models import load_backbone
from dgmerge.models.classifier import trainable_encoder_names
from dgmerge.models.stages import Cut, capture, first_trainable_block, run_from


@pytest.mark.parametrize("name,block", [("mobilenetv2_050", "blocks.5"), ("resnet18", "layer3"),
                                        ("vit_tiny_patch16_224", "blocks.10")])
def test_suffix_from_captured_prefix_equals_full_forward(name, block):
    torch.manual_seed(0)
    encoder = timm.create_model(name, pretrained=False, num_classes=0).eval()
    images = torch.randn(3, 3, 224, 224)
    cut = Cut(block=block, image_size=224)
    with torch.no_grad():
        full = encoder(images)
        activations = capture(encoder, cut, images)
        resumed = run_from(encoder, cut, activations)
    assert activations.shape[0] == 3
    torch.testing.assert_close(resumed, full, rtol=1e-5, atol=1e-5)


def test_gradients_flow_only_into_the_suffix():
    backbone = load_backbone(BackboneConfig(kind="tiny_cnn", name="tiny"))
    encoder = backbone.encoder.eval()
    cut = Cut(block="blocks.2", image_size=backbone.image_size)
    activations = capture(encoder, cut, torch.randn(2, 3, 64, 64))
    run_from(encoder, cut, activations).sum().backward()
    grads = {n: p.grad is not None and bool(p.grad.abs().sum() > 0) for n, p in encoder.named_parameters()}
    assert all(v for n, v in grads.items() if n.startswith(("blocks.2.", "blocks.3."))
               and n.endswith("weight") and ".0." in n)
    assert not any(v for n, v in grads.items() if n.startswith(("blocks.0.", "blocks.1.")))


def test_first_trainable_block_follows_the_trainable_spec():
    backbone = load_backbone(BackboneConfig(kind="tiny_cnn", name="tiny"))
    names = lambda spec: set(trainable_encoder_names(backbone.encoder, backbone, spec))  # noqa: E731
    assert first_trainable_block(backbone.encoder, backbone.blocks, names("last:2")) == "blocks.2"
    assert first_trainable_block(backbone.encoder, backbone.blocks, names("all")) == "blocks.0"
    # Norms and biases train in every block, including the first: no constant prefix after blocks.0.
    assert first_trainable_block(backbone.encoder, backbone.blocks, names("norms_biases")) == "blocks.0"
    assert first_trainable_block(backbone.encoder, backbone.blocks, set()) is None


def test_capture_of_a_block_never_called_is_an_error():
    class Encoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.used, self.unused = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)

        def forward(self, x):
            return self.used(x)

    encoder = Encoder()
    with pytest.raises(RuntimeError, match="never called"):
        capture(encoder, Cut(block="unused", image_size=1), torch.randn(1, 2))


@pytest.mark.parametrize("name,block,size", [("mobilenetv2_050", "blocks.5", 32), ("vit_tiny_patch16_224", "blocks.10", 224)])
def test_a_small_dummy_image_gives_the_same_suffix_and_networks_needing_their_size_get_it(name, block, size, monkeypatch):
    from dgmerge.models import stages

    torch.manual_seed(0)
    encoder = timm.create_model(name, pretrained=False, num_classes=0).eval()
    cut = Cut(block=block, image_size=224)
    with torch.no_grad():
        activations = capture(encoder, cut, torch.randn(2, 3, 224, 224))
        small = run_from(encoder, cut, activations)
        assert stages._dummy_sizes[encoder][block] == size
        monkeypatch.setattr(stages, "SMALL_DUMMY", 224)
        stages._dummy_sizes.clear()
        full = run_from(encoder, cut, activations)
    assert torch.equal(small, full)
