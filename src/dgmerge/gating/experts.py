"""The model pool: θ0 with a frozen probe head per task, experts fine-tuned on cached activations.

Every expert trains the same `last:2` tensors from θ0 with the same settings, under a
frozen linear-probe head (fitted on θ0's features, as the project's non-CLIP protocol
does), so all merges start from one θ0 and merging touches the trained blocks only.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset

from dgmerge.config import ProbeConfig, TrainConfig
from dgmerge.gating.combine import collect_pointwise_gram
from dgmerge.gating.gate import Gate, gate_fraction, new_gate, train_gate
from dgmerge.gating.sources import Setting
from dgmerge.models.classifier import Classifier, set_trainable
from dgmerge.models.heads import LinearHead
from dgmerge.models.stages import StageEncoder
from dgmerge.training.finetune import fine_tune
from dgmerge.training.probe import extract_features, fit_linear_probe

StateDict = dict[str, torch.Tensor]


@dataclass
class PoolSettings:
    """Training settings shared by every expert, gate and Gram collection of a benchmark."""

    steps: int = 200
    batch_size: int = 24
    lr: float = 1e-4
    weight_decay: float = 0.1
    eval_every: int = 100
    probe_epochs: int = 30
    probe_lr: float = 1e-3
    gate_fraction: float = 0.15
    gate_steps: int = 150
    gate_batch: int = 16
    gate_lr: float = 1e-3
    gram_batches: int = 8
    eval_batch: int = 128
    max_test: int | None = None  # multitask: score a seeded random subset of at most this many per task


def probe_head(setting: Setting, data: Dataset, n_classes: int, pool: PoolSettings, seed: int) -> LinearHead:
    """A frozen linear probe on θ0's features of `data` (cached activations)."""
    encoder = StageEncoder(setting.backbone.encoder, setting.cut)
    feats, labels = extract_features(encoder, data, pool.eval_batch, desc="probe features")
    linear = fit_linear_probe(feats, labels, n_classes, ProbeConfig(epochs=pool.probe_epochs, lr=pool.probe_lr), seed)
    head = LinearHead(setting.backbone.feature_dim, n_classes)
    head.load_state_dict({f"linear.{k}": v for k, v in linear.state_dict().items()})
    head.requires_grad_(False)
    return head


def theta0_with(setting: Setting, head: torch.nn.Module) -> Classifier:
    """θ0's encoder (a copy) with `head`, reading activations at the cut."""
    model = Classifier(copy.deepcopy(setting.backbone.encoder), copy.deepcopy(head))
    model.cut = setting.cut
    return model.eval()


def train_expert(setting: Setting, head: torch.nn.Module, train: Dataset, val: dict[str, Dataset],
                 pool: PoolSettings, seed: int, desc: str) -> Classifier:
    """θ0 + `head` fine-tuned (last:2) on `train`; the checkpoint with the best `val` accuracy (last one if no val)."""
    model = theta0_with(setting, head)
    set_trainable(model, setting.backbone, "last:2", train_head=False)
    cfg = TrainConfig(steps=pool.steps, batch_size=pool.batch_size, lr=pool.lr, weight_decay=pool.weight_decay,
                      trainable="last:2", eval_every=pool.eval_every, eval_batch_size=pool.eval_batch)
    result = fine_tune(model, {desc: train}, val, cfg, seed, desc=desc)
    model.load_state_dict(result.best_state)
    model.requires_grad_(False)
    return model.eval()


def expert_grams(setting: Setting, expert: Classifier, train: Dataset, pool: PoolSettings, keys: Sequence[str],
                 seed: int) -> StateDict:
    """RegMean's Gram matrices of the expert's 1×1 convs on `pool.gram_batches` batches of its training data."""
    generator = torch.Generator().manual_seed(seed)
    loader = DataLoader(train, batch_size=32, shuffle=True, generator=generator)
    return collect_pointwise_gram(expert.encoder, loader, keys, cut=setting.cut, max_batches=pool.gram_batches)


def trained_keys(setting: Setting) -> list[str]:
    """Classifier state-dict keys of the trained encoder tensors."""
    return [f"encoder.{n}" for n in setting.trainable]


def fit_gate(setting: Setting, train_sets: Sequence[Dataset], pool: PoolSettings, seed: int) -> Gate:
    """A gate over len(train_sets) tasks on ≤ `gate_fraction` of each task's training split, unlabeled."""
    subsets = []
    for data in train_sets:
        rows = gate_fraction(list(range(len(data))), pool.gate_fraction, seed)  # type: ignore[arg-type]
        subsets.append(torch.utils.data.Subset(data, rows))
    gate = new_gate(setting.backbone.encoder, setting.backbone.feature_dim, len(train_sets), setting.cut,
                    setting.trainable, seed)
    train_gate(gate, subsets, steps=pool.gate_steps, batch_size=pool.gate_batch, lr=pool.gate_lr, seed=seed)
    return gate


@torch.no_grad()
def gate_probs(gate: Gate, data: Dataset, batch_size: int) -> torch.Tensor:
    """P(x) for every item of `data`, (n, N)."""
    gate.eval()
    out = [torch.softmax(gate(x), dim=-1) for x, _ in DataLoader(data, batch_size=batch_size)]
    return torch.cat(out)


def pooled(sets: Sequence[Dataset]) -> Dataset:
    """One dataset over several (for the probe on pooled sources)."""
    return ConcatDataset(list(sets))
