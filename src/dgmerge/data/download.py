"""`dgmerge data download`: fetch a DomainBed dataset and lay it out as DomainBed does.

Same archives and the same renames as DomainBed's `scripts/download.py` (PACS's `kfold`
→ `PACS`, `OfficeHomeDataset_10072016` → `office_home`, the DomainNet duplicate list,
TerraIncognita's per-location re-foldering). Everything happens in a hidden temporary
folder under `--root` and is renamed into place at the end, so an interrupted download
never leaves a half dataset that would later look complete.

Network access is the single `fetch(url, dest)` function, injectable for tests and for
mirrors; the default needs `gdown` for Google Drive links.
"""

from __future__ import annotations

import json
import os
import shutil
import tarfile
import tempfile
import urllib.request
import zipfile
from pathlib import Path
from typing import Callable

from dgmerge.data.errors import DataError
from dgmerge.data.imagefolder import scan_domains
from dgmerge.data.registry import DatasetSpec, find_spec, known_names

Fetch = Callable[[str, Path], None]
Log = Callable[[str], None]

DOMAIN_NET_DUPLICATES_URL = (
    "https://raw.githubusercontent.com/facebookresearch/DomainBed/main/domainbed/misc/domain_net_duplicates.txt")
TERRA_LOCATIONS = ("38", "46", "100", "43")
TERRA_CATEGORIES = ("bird", "bobcat", "cat", "coyote", "dog", "empty", "opossum", "rabbit", "raccoon", "squirrel")


class DownloadError(DataError):
    """A download or extraction that did not produce the expected dataset."""


def default_fetch(url: str, dest: Path) -> None:
    """Download `url` to `dest` (Google Drive through gdown, anything else through urllib)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    if "drive.google.com" in url:
        try:
            import gdown  # type: ignore[import-not-found]
        except ImportError as exc:
            raise DownloadError(f"{url} is on Google Drive, which needs gdown: `pip install gdown` "
                                f"(or download it yourself and extract it under --root)") from exc
        if gdown.download(url, str(dest), quiet=False) is None:
            raise DownloadError(f"gdown could not download {url}")
        return
    partial = dest.with_name(dest.name + ".part")
    with urllib.request.urlopen(url) as response, open(partial, "wb") as out:  # noqa: S310 (fixed https/http urls)
        shutil.copyfileobj(response, out, length=1 << 20)
    os.replace(partial, dest)


def _inside(base: Path, name: str) -> bool:
    target = os.path.realpath(os.path.join(base, name))
    return target == os.path.realpath(base) or target.startswith(os.path.realpath(base) + os.sep)


def extract_archive(archive: Path, dest: Path) -> None:
    """Extract a .zip, .tar, .tar.gz or .tgz into `dest`, refusing members that would escape it."""
    dest.mkdir(parents=True, exist_ok=True)
    name = archive.name.lower()
    if name.endswith(".zip"):
        with zipfile.ZipFile(archive) as zf:
            for member in zf.namelist():
                if not _inside(dest, member):
                    raise DownloadError(f"{archive}: member {member!r} would be written outside {dest}")
            zf.extractall(dest)
    elif name.endswith((".tar", ".tar.gz", ".tgz")):
        with tarfile.open(archive) as tf:
            for member in tf.getmembers():
                if not _inside(dest, member.name) or member.issym() or member.islnk():
                    raise DownloadError(f"{archive}: member {member.name!r} is a link or leaves {dest}")
            tf.extractall(dest, filter="data") if hasattr(tarfile, "data_filter") else tf.extractall(dest)
    else:
        raise DownloadError(f"{archive}: unknown archive type (expected .zip, .tar, .tar.gz)")


def _fetch_extract(url: str, work: Path, into: Path, fetch: Fetch, log: Log, filename: str | None = None) -> None:
    # Drive links ("uc?id=…") carry no file name, and the name's suffix picks the extractor.
    archive = work / "archives" / (filename or url.rstrip("/").split("/")[-1].split("?")[0])
    log(f"fetching {url}")
    fetch(url, archive)
    log(f"extracting {archive.name}")
    extract_archive(archive, into)
    archive.unlink()  # archives can be as large as the dataset; free the space at once


def _find_domain_dir(extracted: Path, spec: DatasetSpec, preferred: str) -> Path:
    # The folder holding every domain: DomainBed's expected name first, else search two levels.
    candidates = [extracted / preferred, extracted / spec.folder, extracted]
    candidates += [p for p in sorted(extracted.glob("*")) if p.is_dir()]
    candidates += [p for p in sorted(extracted.glob("*/*")) if p.is_dir()]
    for folder in candidates:
        if folder.is_dir() and all((folder / d).is_dir() for d in spec.domains):
            return folder
    found = sorted(p.name for p in extracted.iterdir())
    raise DownloadError(f"the {spec.name} archive did not contain {preferred}/ with domains "
                        f"{', '.join(spec.domains)}; it contained {found}")


def _single_archive(preferred: str, filename: str) -> Callable[[DatasetSpec, Path, Fetch, Log], Path]:
    def prepare(spec: DatasetSpec, work: Path, fetch: Fetch, log: Log) -> Path:
        extracted = work / "extracted"
        _fetch_extract(spec.urls[0], work, extracted, fetch, log, filename)
        return _find_domain_dir(extracted, spec, preferred)
    return prepare


def _prepare_domain_net(spec: DatasetSpec, work: Path, fetch: Fetch, log: Log) -> Path:
    out = work / spec.folder
    for url in spec.urls:
        _fetch_extract(url, work, out, fetch, log)
    # DomainBed drops images that appear in several domains; the list lives in its repo.
    listing = work / "domain_net_duplicates.txt"
    try:
        fetch(DOMAIN_NET_DUPLICATES_URL, listing)
    except Exception as exc:  # a missing list only keeps a few duplicates; warn and go on
        log(f"warning: could not fetch DomainBed's duplicate list ({exc}); duplicates are kept")
        return out
    removed = 0
    for line in listing.read_text().splitlines():
        line = line.strip()
        if line and _inside(out, line) and (out / line).is_file():
            (out / line).unlink()
            removed += 1
    log(f"removed {removed} duplicate images listed by DomainBed")
    return out


def _prepare_terra(spec: DatasetSpec, work: Path, fetch: Fetch, log: Log) -> Path:
    extracted = work / "extracted"
    for url in spec.urls:
        _fetch_extract(url, work, extracted, fetch, log)
    annotations = next(iter(sorted(extracted.rglob("caltech_images_*.json")) or sorted(extracted.rglob("*.json"))),
                       None)
    images = next((p for p in sorted(extracted.rglob("eccv_18_all_images_sm")) if p.is_dir()), None)
    if annotations is None or images is None:
        raise DownloadError(f"TerraIncognita archives lacked the annotation json or eccv_18_all_images_sm/ "
                            f"(found {sorted(p.name for p in extracted.iterdir())})")
    return reorganize_terra(json.loads(annotations.read_text()), images, work / spec.folder)


def reorganize_terra(data: dict, images_dir: Path, out: Path) -> Path:
    """Copy the camera-trap images of DomainBed's 4 locations and 10 classes into `out/location_X/<class>/`.

    Same selection as DomainBed's `download_terra_incognita`, but with annotations indexed
    by image id instead of rescanned for every image.
    """
    categories = {c["id"]: c["name"] for c in data["categories"]}
    by_image: dict[object, list[str]] = {}
    for ann in data["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(categories[ann["category_id"]])
    for image in data["images"]:
        location = str(image["location"])
        if location not in TERRA_LOCATIONS:
            continue
        loc_dir = out / f"location_{location}"
        loc_dir.mkdir(parents=True, exist_ok=True)
        for category in by_image.get(image["id"], []):
            if category in TERRA_CATEGORIES:
                (loc_dir / category).mkdir(exist_ok=True)
                shutil.copyfile(images_dir / image["file_name"], loc_dir / category / image["file_name"])
    return out


PREPARERS: dict[str, Callable[[DatasetSpec, Path, Fetch, Log], Path]] = {
    # (folder inside the archive, archive file name) as in DomainBed's download.py
    "PACS": _single_archive("kfold", "PACS.zip"),
    "VLCS": _single_archive("VLCS", "VLCS.tar.gz"),
    "OfficeHome": _single_archive("OfficeHomeDataset_10072016", "office_home.zip"),
    "DomainNet": _prepare_domain_net,
    "TerraIncognita": _prepare_terra,
}


def download_dataset(name: str, root: Path, fetch: Fetch = default_fetch, force: bool = False,
                     log: Log = print) -> Path:
    """Download and lay out dataset `name` as `root/<folder>` (e.g. data/PACS); return that path.

    Refuses to replace an existing dataset folder unless `force`. Builds everything in a
    temporary folder under `root` and renames it into place only once its domains check out.
    """
    spec = find_spec(name)
    if spec is None or spec.name not in PREPARERS:
        raise DownloadError(f"no download recipe for {name!r}; known datasets: {', '.join(known_names())}")
    root = Path(root)
    target = root / spec.folder
    if target.exists() and not force:
        raise FileExistsError(f"{target} already exists; check it with `dgmerge data check {target}` "
                              f"or pass --force to download it again and replace it")
    root.mkdir(parents=True, exist_ok=True)
    # Same file system as the target, so the final rename is atomic.
    work = Path(tempfile.mkdtemp(prefix=f".dgmerge-download-{spec.folder}-", dir=root))
    try:
        built = PREPARERS[spec.name](spec, work, fetch, log)
        index = scan_domains(built)
        missing = [d for d in spec.domains if d not in index.domains]
        if missing:
            raise DownloadError(f"{spec.name} download lacks domain(s) {', '.join(missing)} in {built}")
        previous = work / "previous"
        if target.exists():
            os.replace(target, previous)  # deleted with `work` below, once the new one is in place
        try:
            os.replace(built, target)
        except OSError:
            if previous.exists():
                os.replace(previous, target)
            raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    counts = ", ".join(f"{d} {len(s)}" for d, s in index.samples.items())
    log(f"{spec.name} is ready in {target} ({counts} images)")
    return target
