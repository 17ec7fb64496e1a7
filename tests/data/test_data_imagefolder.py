"""Scanning DomainBed trees and loading images, including the error messages users see."""

from pathlib import Path

import pytest
import torch
from PIL import Image

from dgmerge.data.errors import BadImageError, DatasetNotFoundError, EmptyDomainError, UnknownDomainError
from dgmerge.data.imagefolder import ImageDataset, scan_domains


def test_scan_orders_domains_classes_and_files(make_tree):
    root = make_tree({"b_dom": {"cat": 2, "dog": 1}, "a_dom": {"dog": 2, "ant": 1}})
    (root / "a_dom" / "dog" / "UPPER.JPG").write_bytes((root / "a_dom" / "dog" / "000.png").read_bytes())
    (root / "a_dom" / "dog" / "notes.txt").write_text("not an image")
    index = scan_domains(root)
    assert index.domains == ("a_dom", "b_dom")
    # Labels index the sorted union of class names, identical in every domain.
    assert index.classes == ("ant", "cat", "dog")
    assert [(p.name, y) for p, y in index.samples["a_dom"]] == [
        ("000.png", 0), ("000.png", 2), ("001.png", 2), ("UPPER.JPG", 2)]
    assert [(p.parent.name, y) for p, y in index.samples["b_dom"]] == [("cat", 1), ("cat", 1), ("dog", 2)]
    assert index.counts()["b_dom"] == {"ant": 0, "cat": 2, "dog": 1}
    assert index.domain_ids == {"a_dom": 0, "b_dom": 1}


def test_registered_dataset_uses_registry_order_and_folder_alias(make_tree, tmp_path):
    make_tree({d: {"Pen": 1} for d in ("Real World", "Art", "Product", "Clipart")}, name="office_home")
    # dataset "OfficeHome" resolves to DomainBed's folder name office_home.
    index = scan_domains(tmp_path / "OfficeHome")
    assert index.root == tmp_path / "office_home"
    assert index.domains == ("Art", "Clipart", "Product", "Real World")


def test_domain_subset_keeps_domain_ids(make_tree):
    root = make_tree({"a": {"x": 1}, "b": {"x": 1}, "c": {"x": 1}})
    index = scan_domains(root, ["c", "a"])
    assert index.domains == ("a", "c")
    assert index.domain_id("c") == 2  # its id among all domains on disk, so splits do not shift


def test_missing_dataset_names_path_and_download_command(tmp_path):
    with pytest.raises(DatasetNotFoundError) as err:
        scan_domains(tmp_path / "PACS")
    message = str(err.value)
    assert str(tmp_path / "PACS") in message and "dgmerge data download PACS" in message
    with pytest.raises(FileNotFoundError, match="DomainBed layout"):
        scan_domains(tmp_path / "MyData")


def test_empty_domain_and_unknown_domain_errors(make_tree):
    root = make_tree({"a": {"x": 2}, "b": {"x": 1}})
    with pytest.raises(UnknownDomainError, match="valid domains: a, b"):
        scan_domains(root, ["watercolor"])
    with pytest.raises(UnknownDomainError, match="'watercolor'.*valid domains: a, b"):
        scan_domains(root).require_domain("watercolor")
    (root / "empty" / "x").mkdir(parents=True)
    with pytest.raises(EmptyDomainError, match="'empty'"):
        scan_domains(root)
    assert scan_domains(root, allow_empty=True).samples["empty"] == []


def test_image_dataset_returns_transformed_tensor_and_label(make_tree):
    root = make_tree({"a": {"x": 1, "y": 1}})
    samples = scan_domains(root).samples["a"]
    image, label = ImageDataset(samples)[1]
    assert label == 1 and image.shape == (3, 12, 12) and image.dtype == torch.float32
    assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0
    sizes = ImageDataset(samples, transform=lambda im: im.size)
    assert sizes[0] == ((12, 12), 0)


def _with_bad_file(root: Path) -> tuple[list, Path]:
    bad = root / "a" / "x" / "001.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
    return scan_domains(root).samples["a"], bad


def test_bad_image_error_names_the_file_and_the_fix(make_tree):
    samples, bad = _with_bad_file(make_tree({"a": {"x": 3}}))
    data = ImageDataset(samples)
    with pytest.raises(BadImageError) as err:
        data[1]
    assert str(bad) in str(err.value)
    assert "dgmerge data check" in str(err.value) and "on_bad_image: skip" in str(err.value)
    missing = ImageDataset([(bad.with_name("gone.png"), 0)])
    with pytest.raises(BadImageError, match="gone.png"):
        missing[0]


def test_skip_mode_substitutes_next_readable_sample_and_counts(make_tree):
    samples, bad = _with_bad_file(make_tree({"a": {"x": 3}}))
    data = ImageDataset(samples, transform=lambda im: im.getpixel((0, 0)), on_bad_image="skip")
    good = ImageDataset(samples, transform=lambda im: im.getpixel((0, 0)))
    # Index 1 is bad: the substitute is deterministically index 2.
    assert data[1] == good[2]
    assert data[1] == good[2]
    assert data.skipped == {bad}
    assert [data[i] for i in range(3)] == [good[0], good[2], good[2]]


def test_skip_mode_with_every_image_bad_raises(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"junk")
    with pytest.raises(BadImageError, match="none of the 1 images"):
        ImageDataset([(bad, 0)], on_bad_image="skip")[0]


def test_grayscale_and_palette_images_become_rgb(tmp_path):
    Image.new("L", (5, 5), 9).save(tmp_path / "g.png")
    Image.new("P", (5, 5), 3).save(tmp_path / "p.gif")
    data = ImageDataset([(tmp_path / "g.png", 0), (tmp_path / "p.gif", 1)])
    assert data[0][0].shape == (3, 5, 5) and data[1][0].shape == (3, 5, 5)
