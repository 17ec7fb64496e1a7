"""The generic DomainBed image-folder loader: `<root>/<Dataset>/<domain>/<class>/<image>`.

`scan_domains` only lists files (no decoding), so indexing PACS takes well under a second;
images are opened lazily by `ImageDataset`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

import torch
from PIL import Image
from torch.utils.data import Dataset

from dgmerge.data.errors import BadImageError, DatasetNotFoundError, EmptyDomainError, UnknownDomainError
from dgmerge.data.registry import find_spec

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})

Sample = tuple[Path, int]
BadImageMode = Literal["raise", "skip"]


@dataclass
class DomainIndex:
    """Every image of a dataset, per domain, with labels shared by all domains.

    `classes` is the sorted union of the class folder names; a label is the index into it,
    so the same class has the same label in every domain even when a domain lacks a class.
    `domain_ids` numbers the domains found on disk (registry order, else sorted); it seeds the
    splits, so it does not change when only some domains are loaded.
    """

    root: Path
    domains: tuple[str, ...]
    classes: tuple[str, ...]
    samples: dict[str, list[Sample]]
    domain_ids: dict[str, int] = field(default_factory=dict)
    # Class folders present in each domain, to report domains that differ.
    domain_classes: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        """Number of classes (length of the shared label space)."""
        return len(self.classes)

    def require_domain(self, domain: str) -> str:
        """Return `domain` if it is one of ours, else raise UnknownDomainError listing the valid ones."""
        if domain not in self.domains:
            raise UnknownDomainError(
                f"domain {domain!r} is not in {self.root}; valid domains: {', '.join(self.domains)}")
        return domain

    def domain_id(self, domain: str) -> int:
        """The domain's number among all domains on disk (DomainBed's env index)."""
        self.require_domain(domain)
        return self.domain_ids.get(domain, self.domains.index(domain))

    def counts(self) -> dict[str, dict[str, int]]:
        """Images per domain and class: {domain: {class: n}} (classes absent from a domain count 0)."""
        out: dict[str, dict[str, int]] = {}
        for domain in self.domains:
            per_class = dict.fromkeys(self.classes, 0)
            for _, label in self.samples[domain]:
                per_class[self.classes[label]] += 1
            out[domain] = per_class
        return out


def is_image_file(path: Path | str) -> bool:
    """True when the file name has an image extension we load (case-insensitive)."""
    return os.path.splitext(str(path))[1].lower() in IMAGE_EXTENSIONS


def resolve_dataset_dir(dataset_dir: Path) -> Path:
    """`dataset_dir`, or the registered folder next to it (`data/OfficeHome` → `data/office_home`).

    Raises DatasetNotFoundError naming the path and how to get the data.
    """
    dataset_dir = Path(dataset_dir)
    if dataset_dir.is_dir():
        return dataset_dir
    spec = find_spec(dataset_dir.name)
    if spec is not None and (dataset_dir.parent / spec.folder).is_dir():
        return dataset_dir.parent / spec.folder
    if spec is not None:
        how = (f"download it with `dgmerge data download {spec.name} --root {dataset_dir.parent}` "
               f"(creates {dataset_dir.parent / spec.folder})")
    else:
        how = ("put it there in the DomainBed layout <root>/<Dataset>/<domain>/<class>/<image>, or use "
               "`dgmerge data download NAME --root DIR` for PACS, VLCS, OfficeHome, TerraIncognita, DomainNet")
    raise DatasetNotFoundError(f"dataset directory {dataset_dir} does not exist; {how}")


def _visible_subdirs(path: Path) -> list[str]:
    # Hidden folders (.git, a download's temp dir) are never domains or classes.
    return sorted(e.name for e in os.scandir(path) if e.is_dir() and not e.name.startswith("."))


def _order_domains(found: list[str], dataset_dir: Path) -> list[str]:
    spec = find_spec(dataset_dir.name)
    if spec is None:
        return found
    # Registry order first (DomainBed's env indices), then anything unexpected, sorted.
    return [d for d in spec.domains if d in found] + [d for d in found if d not in spec.domains]


def _class_images(class_dir: Path) -> list[Path]:
    # Recursive like torchvision's ImageFolder; sorted so labels and splits never depend on
    # the file system's listing order.
    files: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(class_dir):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        files += [Path(dirpath) / f for f in filenames if not f.startswith(".") and is_image_file(f)]
    return sorted(files)


def scan_domains(dataset_dir: Path, domains: Sequence[str] | None = None,
                 allow_empty: bool = False) -> DomainIndex:
    """Index the images of a DomainBed-layout dataset without decoding any of them.

    `domains` restricts loading to those domains (error listing the valid ones if one is
    unknown). Raises DatasetNotFoundError for a missing directory and EmptyDomainError
    for a domain without images (unless `allow_empty`, which `data check` uses to report it).
    """
    dataset_dir = resolve_dataset_dir(Path(dataset_dir))
    all_domains = _order_domains(_visible_subdirs(dataset_dir), dataset_dir)
    if not all_domains:
        raise EmptyDomainError(f"{dataset_dir} has no domain folders; expected "
                               f"{dataset_dir}/<domain>/<class>/<image>")
    if domains is not None:
        unknown = [d for d in domains if d not in all_domains]
        if unknown:
            raise UnknownDomainError(f"domain(s) {', '.join(map(repr, unknown))} not in {dataset_dir}; "
                                     f"valid domains: {', '.join(all_domains)}")
        chosen = [d for d in all_domains if d in set(domains)]
    else:
        chosen = all_domains
    domain_classes = {d: tuple(_visible_subdirs(dataset_dir / d)) for d in chosen}
    classes = tuple(sorted(set().union(*domain_classes.values())))
    label_of = {c: i for i, c in enumerate(classes)}
    samples: dict[str, list[Sample]] = {}
    for domain in chosen:
        samples[domain] = [(p, label_of[c]) for c in domain_classes[domain]
                           for p in _class_images(dataset_dir / domain / c)]
        if not samples[domain] and not allow_empty:
            raise EmptyDomainError(
                f"domain {domain!r} ({dataset_dir / domain}) has no images; expected "
                f"<class>/<image> inside it with extensions {', '.join(sorted(IMAGE_EXTENSIONS))}")
    return DomainIndex(root=dataset_dir, domains=tuple(chosen), classes=classes, samples=samples,
                       domain_ids={d: all_domains.index(d) for d in chosen}, domain_classes=domain_classes)


def load_rgb(path: Path) -> Image.Image:
    """Open an image fully and convert it to RGB; raises BadImageError naming the file."""
    try:
        with Image.open(path) as image:
            # convert() forces the full decode here, while the file is open, so a truncated
            # file fails now (naming it) rather than later inside a transform.
            return image.convert("RGB")
    except Exception as exc:  # PIL raises many types (OSError, SyntaxError, ValueError...)
        raise BadImageError(
            f"cannot read image {path}: {type(exc).__name__}: {exc}. Find every bad file with "
            f"`dgmerge data check <dataset dir> --deep`, then delete or replace it, or set "
            f"`data.on_bad_image: skip` to substitute another image") from exc


class ImageDataset(Dataset):
    """(image tensor, label) pairs from a list of (path, label) samples, decoded lazily.

    on_bad_image="raise": an unreadable file raises BadImageError naming it.
    on_bad_image="skip": the next readable sample (idx+1, idx+2, … wrapping) is returned
    instead, so the substitute is the same on every run, and the bad path is added to
    `.skipped`. With DataLoader workers each worker has its own copy of `.skipped`, so the
    parent's set only shows what was skipped in the main process (num_workers=0).
    """

    def __init__(self, samples: Sequence[Sample], transform: Callable[[Image.Image], Any] | None = None,
                 on_bad_image: BadImageMode = "raise"):
        if on_bad_image not in ("raise", "skip"):
            raise ValueError(f"on_bad_image must be 'raise' or 'skip', got {on_bad_image!r}")
        self.samples = list(samples)
        self.transform = transform
        self.on_bad_image = on_bad_image
        self.skipped: set[Path] = set()
        self._bad: set[int] = set()

    @property
    def targets(self) -> list[int]:
        """Labels in sample order (torchvision's ImageFolder name)."""
        return [label for _, label in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def _load(self, idx: int) -> tuple[Any, int]:
        path, label = self.samples[idx]
        image = load_rgb(path)
        if self.transform is None:
            return _to_tensor(image), label
        return self.transform(image), label

    def __getitem__(self, idx: int) -> tuple[Any, int]:
        if self.on_bad_image == "raise":
            return self._load(idx)
        n = len(self.samples)
        for step in range(n):
            candidate = (idx + step) % n
            if candidate in self._bad:
                continue
            try:
                return self._load(candidate)
            except BadImageError:
                self._bad.add(candidate)
                self.skipped.add(Path(self.samples[candidate][0]))
        raise BadImageError(f"none of the {n} images of this dataset can be read "
                            f"(first: {self.samples[0][0] if n else 'none'}); run `dgmerge data check --deep`")


def _to_tensor(image: Image.Image) -> torch.Tensor:
    # Without a transform, return float CHW in [0, 1] like torchvision's ToTensor.
    import numpy as np

    array = np.asarray(image, dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()
