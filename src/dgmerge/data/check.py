"""`dgmerge data check`: count images per domain and class and find files that will not load.

A problem (unreadable image, empty domain, a class missing from some domain) makes the
check fail; oddities that do not break training (stray non-image files, a registered
dataset whose domains differ from DomainBed's) are warnings.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from PIL import Image

from dgmerge.data.imagefolder import DomainIndex, is_image_file, scan_domains
from dgmerge.data.registry import find_spec

Progress = Callable[[int, int], None]


@dataclass
class CheckReport:
    """What `check_dataset` found. `ok` is False when anything would break a run."""

    index: DomainIndex
    counts: dict[str, dict[str, int]]
    bad_files: list[tuple[Path, str]] = field(default_factory=list)
    # {domain: classes of the dataset that have no folder (or no images) in that domain}
    missing_classes: dict[str, list[str]] = field(default_factory=dict)
    empty_domains: list[str] = field(default_factory=list)
    ignored_files: list[Path] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    deep: bool = False

    @property
    def totals(self) -> dict[str, int]:
        """Images per domain."""
        return {d: sum(per_class.values()) for d, per_class in self.counts.items()}

    @property
    def problems(self) -> list[str]:
        """One line per problem, for printing."""
        lines = [f"domain {d!r} has no images" for d in self.empty_domains]
        lines += [f"domain {d!r} lacks class(es) {', '.join(c)} that other domains have"
                  for d, c in self.missing_classes.items()]
        lines += [f"unreadable image {p}: {reason}" for p, reason in self.bad_files]
        return lines

    @property
    def ok(self) -> bool:
        """True when no problem was found (warnings do not count)."""
        return not self.problems


def verify_image(path: Path, deep: bool = False) -> str | None:
    """None if `path` opens as an image, else the reason.

    Quick mode runs PIL's `verify()` (header and, for PNG, chunk checksums) without
    decoding pixels; `deep` decodes the whole image as training would, which also catches
    truncated JPEGs that `verify()` lets through.
    """
    try:
        with Image.open(path) as image:
            if deep:
                image.convert("RGB")
            else:
                image.verify()
    except Exception as exc:  # PIL signals a bad file with many exception types
        return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return None


def _stray_files(index: DomainIndex) -> list[Path]:
    # Non-image files inside class folders are skipped by the loader; list them so a
    # wrong extension (e.g. ".jfif") does not silently drop images.
    stray = []
    for domain in index.domains:
        for dirpath, dirnames, filenames in os.walk(index.root / domain):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            depth = len(Path(dirpath).relative_to(index.root / domain).parts)
            stray += [Path(dirpath) / f for f in filenames
                      if not f.startswith(".") and (depth == 0 or not is_image_file(f))]
    return sorted(stray)


def _registry_warnings(index: DomainIndex) -> list[str]:
    spec = find_spec(index.root.name)
    if spec is None:
        return []
    warnings = []
    missing = [d for d in spec.domains if d not in index.domains]
    extra = [d for d in index.domains if d not in spec.domains]
    if missing:
        warnings.append(f"{spec.name} normally has domain(s) {', '.join(missing)}, not found here")
    if extra:
        warnings.append(f"domain(s) {', '.join(extra)} are not {spec.name} domains in DomainBed")
    if spec.num_classes is not None and index.num_classes != spec.num_classes:
        warnings.append(f"{spec.name} has {spec.num_classes} classes in DomainBed, found {index.num_classes}")
    return warnings


def check_dataset(dataset_dir: Path, deep: bool = False, workers: int = 8, domains: Sequence[str] | None = None,
                  on_progress: Progress | None = None) -> CheckReport:
    """Scan `dataset_dir`, open every image (threaded), and report counts and problems.

    `on_progress(done, total)` is called as images are verified. Raises
    DatasetNotFoundError if the directory does not exist.
    """
    index = scan_domains(Path(dataset_dir), domains, allow_empty=True)
    counts = index.counts()
    report = CheckReport(index=index, counts=counts, deep=deep)
    report.empty_domains = [d for d in index.domains if not index.samples[d]]
    for domain in index.domains:
        if domain in report.empty_domains:
            continue
        lacking = [c for c, n in counts[domain].items() if n == 0]
        if lacking:
            report.missing_classes[domain] = lacking
    paths = [p for d in index.domains for p, _ in index.samples[d]]
    total = len(paths)
    # Threads overlap the file reads; PIL releases the GIL while decoding for --deep.
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for done, (path, reason) in enumerate(
                zip(paths, pool.map(lambda p: verify_image(p, deep), paths, chunksize=64)), start=1):
            if reason is not None:
                report.bad_files.append((path, reason))
            if on_progress is not None and (done % 200 == 0 or done == total):
                on_progress(done, total)
    report.ignored_files = _stray_files(index)
    report.warnings = _registry_warnings(index)
    if report.ignored_files:
        shown = ", ".join(str(p) for p in report.ignored_files[:5])
        more = f" (+{len(report.ignored_files) - 5} more)" if len(report.ignored_files) > 5 else ""
        report.warnings.append(f"{len(report.ignored_files)} file(s) are not loaded (not an image, or not "
                               f"inside a class folder): {shown}{more}")
    return report
