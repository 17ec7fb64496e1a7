"""Building a cell: splits, θ0 and its frozen head, datasets (or cached activations).

The test domain is held out of everything built here except the test set itself: the
splits are checked for leaks, the probe head is fitted on the pooled source training
splits, and validation sets are the sources' out-splits.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch.utils.data import ConcatDataset, Dataset

from dgmerge.config import ExperimentConfig
from dgmerge.data.cache import InMemoryDataset
from dgmerge.data.environments import Environments, make_environments
from dgmerge.data.imagefolder import DomainIndex, ImageDataset
from dgmerge.data.leak_guard import refuse_test_samples
from dgmerge.data.splits import seed_hash, split_in_out
from dgmerge.data.transforms import train_transform
from dgmerge.device import resolve_device
from dgmerge.methods.cell import Cell
from dgmerge.models import load_backbone
from dgmerge.models.backbone import Backbone
from dgmerge.models.classifier import Classifier, trainable_encoder_names
from dgmerge.models.heads import LinearHead
from dgmerge.models.stages import Cut, StageEncoder, first_trainable_block
from dgmerge.training.feature_cache import ActivationDataset, cache_key, cached_activations
from dgmerge.training.probe import extract_features, fit_linear_probe


def build_cell(cfg: ExperimentConfig, index: DomainIndex, test_domain: str, seed: int, key: str) -> Cell:
    """Environments, datasets and θ0 (encoder + frozen head) for one seed and test domain."""
    envs = make_environments(index, test_domain, trial_seed=seed, holdout_fraction=cfg.data.holdout_fraction,
                             max_images_per_domain=cfg.data.max_images_per_domain)
    envs.check_no_leak()
    torch.manual_seed(seed)
    backbone = load_backbone(cfg.backbone)
    # The encoder builds the caches and the probe's features where it will train.
    device = resolve_device(cfg.train.device)
    backbone.encoder.to(device)
    eval_tf = backbone.preprocessing()
    train_tf = train_transform(backbone.image_size, backbone.mean, backbone.std) if cfg.data.train_augment else eval_tf
    mode = cfg.data.on_bad_image

    def dataset(samples: list, transform: Any) -> Dataset:
        data = ImageDataset(samples, transform, on_bad_image=mode)
        return InMemoryDataset(data) if cfg.data.cache_images and transform is eval_tf else data

    train_in, probe_in = probe_split(cfg, envs, seed)
    train_sets = {d: dataset(train_in[d], train_tf) for d in envs.sources}
    # The probe reads un-augmented images; without augmentation and a split they are the training sets.
    same = cfg.probe.fit_on == "train" and train_tf is eval_tf
    probe_sets = train_sets if same else {d: dataset(probe_in[d], eval_tf) for d in envs.sources}
    val_sets = {d: dataset(envs.train_out[d], eval_tf) for d in envs.sources}
    test_set = dataset(envs.test_samples(cfg.data.test_split), eval_tf)
    cut = None
    if cfg.train.feature_cache != "off":
        cut = cut_for(cfg, backbone)
        # One cache per whole domain, in path order, so every seed, split and test domain
        # reads the same files; splits are row selections of it.
        domains = {d: sorted(envs.train_in[d] + envs.train_out[d], key=lambda s: str(s[0])) for d in envs.sources}
        domains[test_domain] = sorted(envs.test, key=lambda s: str(s[0]))
        cached = {d: _activations(cfg, backbone, cut, ImageDataset(samples, eval_tf, on_bad_image=mode), d)
                  for d, samples in domains.items()}
        train_sets = {d: cached[d].select(train_in[d]) for d in envs.sources}
        probe_sets = {d: cached[d].select(probe_in[d]) for d in envs.sources}
        val_sets = {d: cached[d].select(envs.train_out[d]) for d in envs.sources}
        test_set = cached[test_domain].select(envs.test_samples(cfg.data.test_split))
    test_paths = frozenset(os.path.abspath(path) for path, _ in index.samples[test_domain])
    head = frozen_head(cfg, backbone, index, seed, probe_sets, cut, test_paths)
    theta0 = Classifier(backbone.encoder, head).to(device)
    theta0.cut = cut
    cell = Cell(cfg, index, envs, seed, test_domain, backbone, theta0, train_sets, val_sets, test_set, key,
                test_paths=test_paths)
    if backbone.text_head is None:
        cell.probe_sets = probe_sets
        cell.probe_paths = frozenset(os.path.abspath(path) for d in envs.sources for path, _ in probe_in[d])
    return cell


def probe_split(cfg: ExperimentConfig, envs: Environments, seed: int) -> tuple[dict[str, list], dict[str, list]]:
    """(fine-tuning samples, probe samples) of each source's training split.

    probe.fit_on "train": both are the whole training split (the probe sees what SAE scores).
    "probe_split": a seeded `probe.split_fraction` of each training split fits the probe and
    nothing else; fine-tuning, SAE's scoring and every statistic use the rest.
    """
    if cfg.probe.fit_on == "train":
        return dict(envs.train_in), dict(envs.train_in)
    train, probe = {}, {}
    for d in envs.sources:
        samples = envs.train_in[d]
        keep, held = split_in_out(len(samples), cfg.probe.split_fraction, seed_hash("probe split", seed, d))
        if not keep or not held:
            raise ValueError(f"probe.split_fraction {cfg.probe.split_fraction} leaves no {'probe' if not held else 'training'} "
                             f"samples in source {d!r} ({len(samples)} training images)")
        train[d] = [samples[i] for i in sorted(keep)]
        probe[d] = [samples[i] for i in sorted(held)]
    return train, probe


def cut_for(cfg: ExperimentConfig, backbone: Backbone) -> Cut:
    """Where the frozen prefix ends for `train.trainable`; a clear error when there is none."""
    if cfg.data.train_augment:
        raise ValueError("train.feature_cache needs data.train_augment: false (augmented images differ every step)")
    trainable = set(trainable_encoder_names(backbone.encoder, backbone, cfg.train.trainable))
    block = first_trainable_block(backbone.encoder, backbone.blocks, trainable)
    if block is None:
        raise ValueError(f"train.feature_cache needs a frozen prefix: trainable={cfg.train.trainable!r} trains "
                         f"parameters before every block of {backbone.name}; use trainable: last:N")
    return Cut(block=block, image_size=backbone.image_size)


def _activations(cfg: ExperimentConfig, backbone: Backbone, cut: Cut, data: ImageDataset,
                 domain: str) -> ActivationDataset:
    cache_dir = None
    if cfg.train.feature_cache == "disk":
        cache_dir = cfg.train.feature_cache_dir or cfg.output_dir / "feature_cache"
    key = cache_key(cfg.backbone.model_dump(mode="json"), cut, data.transform, data.samples,
                    cfg.train.feature_cache_dtype)
    return cached_activations(backbone.encoder, cut, data, key=key, cache_dir=cache_dir,
                              dtype=cfg.train.feature_cache_dtype, batch_size=cfg.train.eval_batch_size,
                              desc=f"caching {domain}")


def frozen_head(cfg: ExperimentConfig, backbone: Backbone, index: DomainIndex, seed: int,
                probe_sets: dict[str, Dataset], cut: Cut | None,
                test_paths: frozenset[str] = frozenset()) -> torch.nn.Module:
    """CLIP's text head, or a linear probe fitted on θ0's features of the pooled, un-augmented
    source samples of `probe_sets` (the training splits, or their probe split)."""
    if backbone.text_head is not None:
        return backbone.text_head(list(index.classes), list(cfg.backbone.templates))
    # Source samples only: the head must not see the target.
    pooled = ConcatDataset(list(probe_sets.values()))
    refuse_test_samples({"pooled sources": pooled}, test_paths, "the probe head")
    return probe_head(backbone, cut, pooled, len(index.classes), cfg, seed)


def probe_head(backbone: Backbone, cut: Cut | None, data: Dataset, n_classes: int, cfg: ExperimentConfig,
               seed: int) -> LinearHead:
    """A frozen linear probe on θ0's features of `data` (images, or activations at `cut`)."""
    encoder = StageEncoder(backbone.encoder, cut) if cut is not None else backbone.encoder
    feats, labels = extract_features(encoder, data, cfg.train.eval_batch_size, desc="probe features")
    linear = fit_linear_probe(feats, labels, n_classes, cfg.probe, seed)
    head = LinearHead(backbone.feature_dim, n_classes)
    head.load_state_dict({f"linear.{k}": v for k, v in linear.state_dict().items()})
    head.requires_grad_(False)
    return head
