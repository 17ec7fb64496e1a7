"""Building a multi-task cell: one combination of tasks, each with its own label space and head.

A task is a domain of the experiment's dataset (its classes are the dataset's) or a built-in
task (`digits`). Each is split in/out with DomainBed's hashed seed, as a domain of a DG cell
is; its frozen probe head is fitted on θ0's features of its in-split only, and its test set
is its out-split (a seeded subset of `tasks.max_test` images when set, the same for every
method). With `train.feature_cache` the frozen prefix runs once per image, shared with the
DG experiments on the same data.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import Dataset

from dgmerge.config import ExperimentConfig
from dgmerge.config.tasks import BUILTIN_TASKS
from dgmerge.data.digits import DIGIT_CLASSES, DIGITS, DigitImages
from dgmerge.data.environments import subsample
from dgmerge.data.imagefolder import DomainIndex, ImageDataset
from dgmerge.data.splits import seed_hash, split_in_out
from dgmerge.methods.build import cut_for, probe_head
from dgmerge.methods.cell import Cell
from dgmerge.device import resolve_device
from dgmerge.models import load_backbone
from dgmerge.models.backbone import Backbone
from dgmerge.models.classifier import Classifier
from dgmerge.models.stages import Cut
from dgmerge.training.feature_cache import ActivationDataset, cache_key, cached_activations


def combo_name(combo: list[str]) -> str:
    """The name a combination's rows carry as their test_domain, e.g. photo+digits."""
    return "+".join(combo)


def check_tasks(cfg: ExperimentConfig, index: DomainIndex) -> None:
    """Every task of `tasks.combos` is a domain of the dataset or a built-in task."""
    assert cfg.tasks is not None
    unknown = [t for t in cfg.tasks.names() if t not in index.domains and t not in BUILTIN_TASKS]
    if unknown:
        raise ValueError(f"tasks.combos name unknown task(s) {unknown}; tasks are the domains of "
                         f"{cfg.data.dataset} ({', '.join(index.domains)}) and the built-in {', '.join(BUILTIN_TASKS)}")


def build_task_cell(cfg: ExperimentConfig, index: DomainIndex, combo: list[str], seed: int, key: str) -> Cell:
    """Datasets, heads and test sets of every task of `combo`, and θ0, for one trial seed."""
    assert cfg.tasks is not None
    torch.manual_seed(seed)
    backbone = load_backbone(cfg.backbone)
    device = resolve_device(cfg.train.device)
    backbone.encoder.to(device)
    cut = cut_for(cfg, backbone) if cfg.train.feature_cache != "off" else None
    train_sets: dict[str, Dataset] = {}
    test_sets: dict[str, Dataset] = {}
    heads: dict[str, torch.nn.Module] = {}
    classes: dict[str, list[str]] = {}
    for task in combo:
        data, classes[task], split_key = _task_data(cfg, index, task, backbone, cut)
        in_idx, out_idx = split_in_out(len(data), cfg.data.holdout_fraction, seed_hash(seed, split_key))
        train_sets[task] = _rows(data, in_idx)
        test_sets[task] = _rows(data, _capped(out_idx, cfg.tasks.max_test, seed))
        heads[task] = probe_head(backbone, cut, train_sets[task], len(classes[task]), cfg, seed)
    theta0 = Classifier(backbone.encoder, heads[combo[0]]).to(device)
    heads = {task: head.to(device) for task, head in heads.items()}
    theta0.cut = cut
    first = test_sets[combo[0]]
    return Cell(cfg, index, None, seed, combo_name(combo), backbone, theta0, train_sets, {}, first, key,
                heads=heads, task_classes=classes, test_sets=test_sets)


def _task_data(cfg: ExperimentConfig, index: DomainIndex, task: str, backbone: Backbone,
               cut: Cut | None) -> tuple[Any, list[str], Any]:
    """(the task's whole data in a fixed order, its classes, the key its split seed is hashed from)."""
    if task == DIGITS:
        data: Any = DigitImages(backbone.image_size, backbone.mean, backbone.std)
        classes, split_key, to_cache = list(DIGIT_CLASSES), DIGITS, data
    else:
        samples = index.samples[task]
        if cfg.data.max_images_per_domain:  # the subsample a DG cell of this domain draws
            samples = subsample(samples, cfg.data.max_images_per_domain, seed_hash("subsample", index.domain_id(task)))
        data = ImageDataset(samples, backbone.preprocessing(), on_bad_image=cfg.data.on_bad_image)
        # DomainBed's split of this domain: seed_hash(trial seed, domain id), as in a DG cell.
        classes, split_key = list(index.classes), index.domain_id(task)
        # Cached in path order, like a DG cell's cache of the domain, so both read one file.
        to_cache = ImageDataset(sorted(samples, key=lambda s: str(s[0])), data.transform,
                                on_bad_image=cfg.data.on_bad_image)
    if cut is None:
        return data, classes, split_key
    cache_dir = None
    if cfg.train.feature_cache == "disk":
        cache_dir = cfg.train.feature_cache_dir or cfg.output_dir / "feature_cache"
    key = cache_key(cfg.backbone.model_dump(mode="json"), cut, to_cache.transform, to_cache.samples,
                    cfg.train.feature_cache_dtype)
    cached = cached_activations(backbone.encoder, cut, to_cache, key=key, cache_dir=cache_dir,
                                dtype=cfg.train.feature_cache_dtype, batch_size=cfg.train.eval_batch_size,
                                desc=f"caching {task}")
    return cached.select(list(data.samples)), classes, split_key


def _rows(data: Any, rows: list[int]) -> Dataset:
    if isinstance(data, ActivationDataset):
        return data.select([data.samples[i] for i in rows])
    return torch.utils.data.Subset(data, rows)


def _capped(rows: list[int], limit: int | None, seed: int) -> list[int]:
    """`rows`, or a seeded random subset of `limit` of them in their order (the same for every method)."""
    if limit is None or len(rows) <= limit:
        return list(rows)
    generator = torch.Generator().manual_seed(seed_hash("max_test", seed))
    chosen = torch.randperm(len(rows), generator=generator)[:limit].sort().values
    return [rows[int(i)] for i in chosen]
