"""Known DomainBed datasets: folder names, domain names and where to download them.

The folder and domain names are DomainBed's exactly (`domainbed/datasets.py`,
`domainbed/scripts/download.py`), so a directory prepared by DomainBed's own download
script loads here unchanged and the domain indices (which seed the splits) agree.
Any other dataset in the same layout loads through a generic spec.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class DatasetSpec:
    """What we know about one dataset before looking at the disk.

    `domains` is empty for a generic (unregistered) dataset: the loader then takes the
    sorted sub-folders. `urls` are the archives DomainBed downloads, in order.
    """

    name: str
    folder: str
    domains: tuple[str, ...] = ()
    num_classes: int | None = None
    urls: tuple[str, ...] = ()
    # Where the original data lives, for the user to read the licence and cite it.
    homepage: str = ""
    aliases: tuple[str, ...] = field(default=())

    @property
    def known(self) -> bool:
        """True for a registered dataset (its domain list is fixed)."""
        return bool(self.domains)


_DRIVE = "https://drive.google.com/uc?id="
_VISDA = "http://csr.bu.edu/ftp/visda/2019/multi-source/"
_LILA = "https://lilablobssc.blob.core.windows.net/caltechcameratraps/"

DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        DatasetSpec(
            name="PACS", folder="PACS", num_classes=7,
            domains=("art_painting", "cartoon", "photo", "sketch"),
            urls=(_DRIVE + "1JFr8f805nMUelQWWmfnJR3y4_SYoN5Pd",),
            homepage="https://domaingeneralization.github.io/#data",
        ),
        DatasetSpec(
            name="VLCS", folder="VLCS", num_classes=5,
            domains=("Caltech101", "LabelMe", "SUN09", "VOC2007"),
            urls=(_DRIVE + "1skwblH1_okBwxWxmRsp9_qi15hyPpxg8",),
            homepage="http://www.eecs.qmul.ac.uk/~dl307/project_iccv2017",
        ),
        DatasetSpec(
            name="OfficeHome", folder="office_home", num_classes=65,
            domains=("Art", "Clipart", "Product", "Real World"),
            urls=(_DRIVE + "1uY0pj7oFsjMxRwaD3Sxy0jgel0fsYXLC",),
            homepage="https://www.hemanthdv.org/officeHomeDataset.html",
            aliases=("office_home", "office-home"),
        ),
        DatasetSpec(
            name="TerraIncognita", folder="terra_incognita", num_classes=10,
            domains=("location_100", "location_38", "location_43", "location_46"),
            urls=(_LILA + "eccv_18_all_images_sm.tar.gz",
                  _LILA + "labels/caltech_camera_traps.json.zip"),
            homepage="https://lila.science/datasets/caltech-camera-traps",
            aliases=("terra_incognita", "terra-incognita"),
        ),
        DatasetSpec(
            name="DomainNet", folder="domain_net", num_classes=345,
            domains=("clipart", "infograph", "painting", "quickdraw", "real", "sketch"),
            urls=(_VISDA + "groundtruth/clipart.zip", _VISDA + "infograph.zip",
                  _VISDA + "groundtruth/painting.zip", _VISDA + "quickdraw.zip",
                  _VISDA + "real.zip", _VISDA + "sketch.zip"),
            homepage="http://ai.bu.edu/M3SDA/",
            aliases=("domain_net", "domain-net"),
        ),
    )
}


def find_spec(name: str) -> DatasetSpec | None:
    """The registered spec whose name, folder or alias matches `name` (case-insensitive), or None."""
    wanted = name.strip().lower()
    for spec in DATASETS.values():
        if wanted in {spec.name.lower(), spec.folder.lower(), *(a.lower() for a in spec.aliases)}:
            return spec
    return None


def get_spec(name: str) -> DatasetSpec:
    """The spec for `name` (case-insensitive; DomainBed's name or folder name).

    An unknown name gives a generic spec (folder = name, domains discovered on disk), so
    any dataset in the DomainBed layout works without registering it.
    """
    return find_spec(name) or DatasetSpec(name=name, folder=name)


def known_names() -> list[str]:
    """Names of the registered datasets, for help texts and error messages."""
    return list(DATASETS)
