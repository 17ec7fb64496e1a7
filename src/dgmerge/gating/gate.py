"""The gating network: a small pretrained CNN fine-tuned to tell which task/domain an input is from.

Ye et al. fine-tune an ImageNet MobileNetV2 on unlabeled images of each task (≤ 15% per
task; the only label is the task identity). Here the gate is a copy of θ0's encoder with
a new N-way linear layer; when the experts were partially fine-tuned from a cut, the gate
starts from the same frozen prefix's activations, so it trains on the cached activations
too and, at inference, shares the prefix with the merged model.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset

from dgmerge.data.splits import seed_hash
from dgmerge.device import module_device
from dgmerge.models.classifier import NORM_TYPES
from dgmerge.models.stages import Cut, run_from
from dgmerge.training.batches import BatchStream


class Gate(nn.Module):
    """logits over N tasks = linear(encoder(x)); x is cut activations when `cut` is set."""

    def __init__(self, encoder: nn.Module, feature_dim: int, n_tasks: int, cut: Cut | None = None):
        super().__init__()
        if n_tasks < 1:
            raise ValueError(f"a gate needs at least one task, got n_tasks={n_tasks}")
        self.encoder = encoder
        self.linear = nn.Linear(feature_dim, n_tasks)
        self.cut = cut

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        feats = run_from(self.encoder, self.cut, inputs) if self.cut is not None else self.encoder(inputs)
        return self.linear(feats)

    def train(self, mode: bool = True) -> Gate:
        # BatchNorm statistics stay θ0's (as for the experts): the gate shares the frozen prefix.
        super().train(mode)
        for module in self.modules():
            if isinstance(module, NORM_TYPES):
                module.eval()
        return self


def new_gate(encoder: nn.Module, feature_dim: int, n_tasks: int, cut: Cut | None, trainable: Sequence[str],
             seed: int = 0) -> Gate:
    """A gate from a copy of `encoder` (θ0's); only encoder params named in `trainable` and the linear layer train."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed_hash("gate", seed))
        gate = Gate(copy.deepcopy(encoder), feature_dim, n_tasks, cut)
    chosen = set(trainable)
    unknown = chosen - {n for n, _ in gate.encoder.named_parameters()}
    if unknown:
        raise ValueError(f"gate trainable names not in the encoder: {sorted(unknown)[:4]}")
    for name, param in gate.encoder.named_parameters():
        param.requires_grad_(name in chosen)
    return gate


def gate_fraction(samples: Sequence[Any], fraction: float, seed: int) -> list[Any]:
    """A seeded ⌈fraction·n⌉ subset of a task's training samples (Ye et al.: fraction ≤ 0.15)."""
    if not 0 < fraction <= 1:
        raise ValueError(f"gate fraction={fraction} must be in (0, 1]")
    generator = torch.Generator().manual_seed(seed_hash("gate-subset", seed))
    k = max(1, int(-(-fraction * len(samples) // 1)))
    order = torch.randperm(len(samples), generator=generator)[:k].sort().values
    return [samples[int(i)] for i in order]


class _TaskLabelled(Dataset):
    """Items of `data` with the label replaced by the task index: the gate never sees class labels."""

    def __init__(self, data: Dataset, task: int):
        self.data = data
        self.task = task

    def __len__(self) -> int:
        return len(self.data)  # type: ignore[arg-type]

    def __getitem__(self, idx: int) -> tuple[torch.Tensor, int]:
        return self.data[idx][0], self.task


@dataclass
class GateResult:
    """Training record of a gate: per-step loss and the wall time."""

    history: list[dict[str, float]] = field(default_factory=list)
    wall_time_s: float = 0.0


def train_gate(gate: Gate, task_sets: Sequence[Dataset], *, steps: int = 150, batch_size: int = 16,
               lr: float = 1e-3, weight_decay: float = 0.01, seed: int = 0) -> GateResult:
    """Fine-tune `gate` in place to predict the task index of each input (balanced batches per task)."""
    if len(task_sets) != gate.linear.out_features:
        raise ValueError(f"{len(task_sets)} task datasets for a {gate.linear.out_features}-way gate")
    params = [p for p in gate.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, steps))
    streams = [BatchStream(_TaskLabelled(d, i), batch_size, seed=seed_hash("gate", seed, i))
               for i, d in enumerate(task_sets)]
    start = time.perf_counter()
    result = GateResult()
    gate.train()
    device = params[0].device if params else torch.device("cpu")
    for step in range(1, steps + 1):
        batches = [next(s) for s in streams]
        inputs = torch.cat([b[0] for b in batches]).to(device)
        labels = torch.cat([torch.as_tensor(b[1]) for b in batches]).to(device)
        loss = F.cross_entropy(gate(inputs), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        result.history.append({"step": step, "loss": loss.item()})
    gate.eval()
    gate.requires_grad_(False)
    result.wall_time_s = time.perf_counter() - start
    return result


@torch.no_grad()
def gate_probs(gate: Gate, data: Dataset, batch_size: int) -> torch.Tensor:
    """P(x) = softmax(G(x)) for every item of `data`, (n, N)."""
    gate.eval()
    device = module_device(gate)
    out = [torch.softmax(gate(x.to(device)), dim=-1) for x, _ in DataLoader(data, batch_size=batch_size)]
    return torch.cat(out)
