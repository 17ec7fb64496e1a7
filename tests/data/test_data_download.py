"""Downloads with a fake fetch: DomainBed renames, atomic replace, refusal to overwrite."""

import io
import json
import tarfile
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from dgmerge.data.download import DownloadError, download_dataset, extract_archive
from dgmerge.data.registry import get_spec


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4), (1, 2, 3)).save(buffer, format="PNG")
    return buffer.getvalue()


def _pacs_zip(path: Path, top: str = "kfold") -> None:
    with zipfile.ZipFile(path, "w") as zf:
        for domain in get_spec("PACS").domains:
            for cls in ("dog", "horse"):
                zf.writestr(f"{top}/{domain}/{cls}/pic_001.png", _png())
        zf.writestr("__MACOSX/._junk", b"")


class FakeFetch:
    """Writes a prepared archive for each URL and records the calls."""

    def __init__(self, builders):
        self.builders = builders
        self.urls = []

    def __call__(self, url: str, dest: Path) -> None:
        self.urls.append(url)
        dest.parent.mkdir(parents=True, exist_ok=True)
        self.builders[url](dest)


def test_pacs_download_renames_kfold_and_is_atomic(tmp_path):
    spec = get_spec("pacs")
    fetch = FakeFetch({spec.urls[0]: _pacs_zip})
    out = download_dataset("pacs", tmp_path, fetch=fetch, log=lambda _: None)
    assert out == tmp_path / "PACS" and fetch.urls == list(spec.urls)
    assert sorted(p.name for p in out.iterdir()) == sorted(spec.domains)
    assert (out / "sketch" / "horse" / "pic_001.png").is_file()
    # Nothing else is left under root: no temp dir, no archive, no kfold.
    assert [p.name for p in tmp_path.iterdir()] == ["PACS"]


def test_existing_dataset_is_kept_without_force_and_replaced_with_it(tmp_path):
    spec = get_spec("PACS")
    (tmp_path / "PACS" / "old").mkdir(parents=True)
    fetch = FakeFetch({spec.urls[0]: _pacs_zip})
    with pytest.raises(FileExistsError, match="--force"):
        download_dataset("PACS", tmp_path, fetch=fetch, log=lambda _: None)
    assert fetch.urls == [] and (tmp_path / "PACS" / "old").is_dir()
    download_dataset("PACS", tmp_path, fetch=fetch, force=True, log=lambda _: None)
    assert not (tmp_path / "PACS" / "old").exists() and (tmp_path / "PACS" / "photo").is_dir()


def test_failed_download_leaves_nothing_behind(tmp_path):
    spec = get_spec("PACS")

    def wrong_archive(dest: Path) -> None:
        with zipfile.ZipFile(dest, "w") as zf:
            zf.writestr("kfold/photo/dog/a.png", _png())

    with pytest.raises(DownloadError, match="art_painting"):
        download_dataset("PACS", tmp_path, fetch=FakeFetch({spec.urls[0]: wrong_archive}), log=lambda _: None)
    assert list(tmp_path.iterdir()) == []


def test_vlcs_tar_gz_and_office_home_rename(tmp_path):
    vlcs, office = get_spec("VLCS"), get_spec("OfficeHome")

    def vlcs_tar(dest: Path) -> None:
        with tarfile.open(dest, "w:gz") as tf:
            for domain in vlcs.domains:
                data = _png()
                info = tarfile.TarInfo(f"VLCS/{domain}/bird/x.png")
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))

    def office_zip(dest: Path) -> None:
        with zipfile.ZipFile(dest, "w") as zf:
            for domain in office.domains:
                zf.writestr(f"OfficeHomeDataset_10072016/{domain}/Pen/00001.jpg", _png())
            zf.writestr("OfficeHomeDataset_10072016/ImageInfo.csv", "x")

    fetch = FakeFetch({vlcs.urls[0]: vlcs_tar, office.urls[0]: office_zip})
    assert download_dataset("VLCS", tmp_path, fetch=fetch, log=lambda _: None) == tmp_path / "VLCS"
    out = download_dataset("office_home", tmp_path, fetch=fetch, log=lambda _: None)
    assert out == tmp_path / "office_home" and (out / "Real World" / "Pen" / "00001.jpg").is_file()


def test_domain_net_merges_zips_and_drops_listed_duplicates(tmp_path):
    spec = get_spec("DomainNet")
    builders = {}
    for url, domain in zip(spec.urls, spec.domains):
        def build(dest: Path, domain=domain) -> None:
            with zipfile.ZipFile(dest, "w") as zf:
                zf.writestr(f"{domain}/apple/a.jpg", _png())
                zf.writestr(f"{domain}/apple/dup.jpg", _png())
        builders[url] = build
    from dgmerge.data.download import DOMAIN_NET_DUPLICATES_URL
    builders[DOMAIN_NET_DUPLICATES_URL] = lambda dest: dest.write_text("real/apple/dup.jpg\n../escape.jpg\n")
    out = download_dataset("DomainNet", tmp_path, fetch=FakeFetch(builders), log=lambda _: None)
    assert out == tmp_path / "domain_net"
    assert not (out / "real" / "apple" / "dup.jpg").exists() and (out / "real" / "apple" / "a.jpg").is_file()
    assert (out / "sketch" / "apple" / "dup.jpg").is_file()


def test_terra_incognita_is_refoldered_by_location_and_class(tmp_path):
    spec = get_spec("TerraIncognita")
    images = [("a.jpg", 38, "bobcat"), ("b.jpg", 46, "coyote"), ("c.jpg", 100, "car"), ("d.jpg", 43, "dog"),
              ("e.jpg", 7, "dog"), ("f.jpg", 100, "rabbit")]

    def image_tar(dest: Path) -> None:
        with tarfile.open(dest, "w:gz") as tf:
            for name, _, _ in images:
                data = _png()
                info = tarfile.TarInfo(f"eccv_18_all_images_sm/{name}")
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))

    def labels_zip(dest: Path) -> None:
        cats = sorted({c for _, _, c in images})
        data = {"categories": [{"id": i, "name": c} for i, c in enumerate(cats)],
                "images": [{"id": n, "file_name": n, "location": str(loc)} for n, loc, _ in images],
                "annotations": [{"image_id": n, "category_id": cats.index(c)} for n, _, c in images]}
        with zipfile.ZipFile(dest, "w") as zf:
            zf.writestr("caltech_images_20210113.json", json.dumps(data))

    fetch = FakeFetch({spec.urls[0]: image_tar, spec.urls[1]: labels_zip})
    out = download_dataset("TerraIncognita", tmp_path, fetch=fetch, log=lambda _: None)
    assert out == tmp_path / "terra_incognita"
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*.jpg"))
    # location 7 and category "car" are not in DomainBed's selection.
    assert files == ["location_100/rabbit/f.jpg", "location_38/bobcat/a.jpg", "location_43/dog/d.jpg",
                     "location_46/coyote/b.jpg"]


def test_extract_refuses_paths_outside_destination(tmp_path):
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("../outside.txt", "x")
    with pytest.raises(DownloadError, match="outside"):
        extract_archive(archive, tmp_path / "dest")
    assert not (tmp_path / "outside.txt").exists()


def test_unknown_dataset_lists_known_ones(tmp_path):
    with pytest.raises(DownloadError, match="PACS, VLCS, OfficeHome, TerraIncognita, DomainNet"):
        download_dataset("ImageNet", tmp_path, fetch=FakeFetch({}))
