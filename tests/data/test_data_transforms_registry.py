"""Transforms produce the requested size/normalisation; the registry has DomainBed's names."""

import pytest
import torch
from PIL import Image

from dgmerge.data.registry import DATASETS, get_spec
from dgmerge.data.transforms import eval_transform, train_transform


def test_eval_transform_keeps_aspect_then_crops_and_normalises():
    image = Image.new("RGB", (300, 150), (255, 0, 128))
    out = eval_transform(64, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))(image)
    assert out.shape == (3, 64, 64)
    assert torch.allclose(out[:, 32, 32], torch.tensor([1.0, -1.0, 128 / 255 * 2 - 1]), atol=0.02)
    squash = eval_transform(64, resize="squash")(image)
    assert squash.shape == (3, 64, 64)


def test_train_transform_is_random_but_sized():
    image = Image.effect_noise((80, 60), 50).convert("RGB")
    tf = train_transform(32, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    torch.manual_seed(0)
    a, b = tf(image), tf(image)
    assert a.shape == b.shape == (3, 32, 32) and not torch.equal(a, b)
    names = [type(t).__name__ for t in tf.transforms]
    assert names == ["RandomResizedCrop", "RandomHorizontalFlip", "ColorJitter", "RandomGrayscale",
                     "ToTensor", "Normalize"]
    assert tf.transforms[0].scale == (0.7, 1.0)


@pytest.mark.parametrize("name, folder, domains", [
    ("PACS", "PACS", ("art_painting", "cartoon", "photo", "sketch")),
    ("vlcs", "VLCS", ("Caltech101", "LabelMe", "SUN09", "VOC2007")),
    ("officehome", "office_home", ("Art", "Clipart", "Product", "Real World")),
    ("TerraIncognita", "terra_incognita", ("location_100", "location_38", "location_43", "location_46")),
    ("domain_net", "domain_net", ("clipart", "infograph", "painting", "quickdraw", "real", "sketch")),
])
def test_registry_matches_domainbed(name, folder, domains):
    spec = get_spec(name)
    assert spec.folder == folder and spec.domains == domains and spec.urls
    # DomainBed numbers environments in sorted folder order; the registry must agree.
    assert list(spec.domains) == sorted(spec.domains)


def test_unknown_dataset_gets_a_generic_spec():
    spec = get_spec("MyShapes")
    assert spec.folder == "MyShapes" and spec.domains == () and not spec.known
    assert set(DATASETS) == {"PACS", "VLCS", "OfficeHome", "TerraIncognita", "DomainNet"}
