"""Fine-tuning under a frozen head: ERM on pooled sources, or one model per source.

Both are the same loop: every step draws `batch_size` images from each training domain,
concatenates them and takes one AdamW step on the mean cross-entropy (DomainBed's ERM).
Model selection is DomainBed's training-domain validation: the checkpoint with the best
mean accuracy over the training domains' out-splits. The target domain is never passed in.
Observers (training/observers.py) watch the same trajectory, so moving averages and SWAD
cost an average per step beyond the run, not a run of their own.
"""

from __future__ import annotations

import copy
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset

from dgmerge.config import TrainConfig
from dgmerge.device import autocast, check_precision, grad_scaler, module_device, resolve_device, to_device
from dgmerge.models.accuracy import accuracy
from dgmerge.models.classifier import Classifier
from dgmerge.progress import progress_steps
from dgmerge.training.batches import BatchStream
from dgmerge.training.checkpoint import NO_CHECKPOINT, Checkpointer
from dgmerge.training.observers import TrajectoryObserver
from dgmerge.training.scalars import open_scalar_log

SELECTION_RULE = "training-domain validation: best mean source out-split accuracy over checkpoints"


@dataclass
class TrainResult:
    """What a fine-tuning run produced: the selected and final weights and its history."""

    best_state: dict[str, torch.Tensor]
    final_state: dict[str, torch.Tensor]
    best_step: int
    best_val_acc: float
    history: list[dict[str, Any]] = field(default_factory=list)
    wall_time_s: float = 0.0


def _clone_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def validation_accuracy(model: Classifier, val_sets: dict[str, Dataset], batch_size: int,
                        precision: str = "fp32") -> dict[str, float]:
    """Accuracy on each training domain's out-split (the model-selection data), on the model's device."""
    return {name: accuracy(model, data, batch_size, desc=f"val {name}", precision=precision)
            for name, data in val_sets.items()}


def validation_loss(model: Classifier, val_sets: dict[str, Dataset], batch_size: int,
                    precision: str = "fp32") -> dict[str, float]:
    """Mean cross-entropy on each training domain's out-split, on the model's device (eval mode)."""
    was_training = model.training
    model.eval()
    device = module_device(model)
    losses = {}
    # A DataLoader draws its base seed from the global generator: fork it, so a run with
    # observers draws the same dropout masks as one without.
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        for name, data in val_sets.items():
            total, count = 0.0, 0
            for images, labels in DataLoader(data, batch_size=batch_size, shuffle=False,
                                             pin_memory=device.type == "cuda"):
                labels = torch.as_tensor(labels).to(device, non_blocking=True)
                with autocast(device, precision):
                    logits = model(images.to(device, non_blocking=True))
                total += F.cross_entropy(logits.float(), labels, reduction="sum").item()
                count += len(labels)
            if count == 0:
                raise ValueError(f"cannot measure the validation loss on an empty dataset ({name})")
            losses[name] = total / count
    model.train(was_training)
    return losses


def to_batch(batches: list[Any], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Concatenated images and labels of per-domain batches, on `device` (async from pinned memory)."""
    images = torch.cat([b[0] for b in batches]).to(device, non_blocking=True)
    labels = torch.cat([torch.as_tensor(b[1]) for b in batches]).to(device, non_blocking=True)
    return images, labels


def fine_tune(model: Classifier, train_sets: dict[str, Dataset], val_sets: dict[str, Dataset],
              cfg: TrainConfig, seed: int, desc: str = "fine-tune",
              checkpoint: Checkpointer = NO_CHECKPOINT, num_workers: int = 0,
              log_dir: Path | None = None, observers: Sequence[TrajectoryObserver] = ()) -> TrainResult:
    """Train `model` in place on `train_sets` and return its best and final weights.

    `model` must already have its trainable parameters chosen (see set_trainable).
    Per-domain training losses are logged at every step for loss-curve figures. With a
    `checkpoint`, the run saves itself every few steps and resumes from the last save, ending
    with the same weights as an uninterrupted run. The model moves to `cfg.device` and trains
    there with forward passes in `cfg.precision` (fp32 master weights and AdamW states); the
    returned states live on that device. `num_workers` loads batches in background processes;
    with `log_dir`, TensorBoard scalars go there (when tensorboard is installed).

    `observers` see every iterate (θ0 as step 0, then each step's weights) and, when they ask,
    the mean source-validation loss ("val_loss" in the history); they are saved in and restored
    from the checkpoint with the rest, and never change the run's own weights or numbers.
    """
    if not train_sets:
        raise ValueError("fine_tune needs at least one training domain")
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("no trainable parameters: check the `trainable` setting")
    names = [o.name for o in observers]
    if len(set(names)) != len(names):
        raise ValueError(f"observers need distinct names (their checkpoint keys), got {names}")
    start = time.perf_counter()
    device = resolve_device(cfg.device)
    check_precision(cfg.precision, device)
    model.to(device)
    torch.manual_seed(seed)
    streams = {name: BatchStream(data, cfg.batch_size, seed=seed * 1000 + i, num_workers=num_workers,
                                 pin_memory=device.type == "cuda")
               for i, (name, data) in enumerate(train_sets.items())}
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scaler = grad_scaler(device, cfg.precision)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.steps)

    history: list[dict[str, Any]] = []
    best_state, best_step, best_acc = _clone_state(model), 0, -1.0
    first_step = 1
    saved = checkpoint.load()
    if saved is not None:
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        if saved.get("scaler"):
            scaler.load_state_dict(saved["scaler"])
        for name, stream in streams.items():
            stream.load_state_dict(saved["streams"][name])
        best_state, best_step, best_acc = to_device(saved["best_state"], device), saved["best_step"], saved["best_acc"]
        history, first_step = saved["history"], saved["step"] + 1
        _restore_observers(observers, saved.get("observers", {}), checkpoint.path, device)
    else:
        for observer in observers:
            observer.on_step(0, model)  # θ0 is the trajectory's first point
    model.train()
    scalars = open_scalar_log(log_dir)
    steps = progress_steps(range(first_step, cfg.steps + 1), desc=desc, total=cfg.steps, every_s=cfg.log_every_s)
    for step in steps:
        batches = [next(stream) for stream in streams.values()]
        images, labels = to_batch(batches, device)
        with autocast(device, cfg.precision):
            logits = model(images)
        per_sample = F.cross_entropy(logits.float(), labels, reduction="none")
        loss = per_sample.mean()
        optimizer.zero_grad(set_to_none=True)
        # A disabled scaler (fp32, bf16) passes the loss and the step through unchanged.
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()

        record: dict[str, Any] = {"step": step, "loss": loss.item(), "lr": scheduler.get_last_lr()[0]}
        offset = 0
        for name, (batch_images, _) in zip(streams, batches):
            record[f"loss/{name}"] = per_sample[offset:offset + len(batch_images)].mean().item()
            offset += len(batch_images)
        for observer in observers:
            observer.on_step(step, model)
        asking = [o for o in observers if o.wants_val_loss(step, cfg.steps)]
        if asking:
            if not val_sets:
                raise ValueError(f"observers {[o.name for o in asking]} need the source validation loss, "
                                 "but there are no validation sets")
            losses = validation_loss(model, val_sets, cfg.eval_batch_size, cfg.precision)
            record["val_loss"] = statistics.fmean(losses.values())
            for observer in asking:
                observer.on_val_loss(step, model, record["val_loss"])
        if step % cfg.eval_every == 0 or step == cfg.steps:
            val = validation_accuracy(model, val_sets, cfg.eval_batch_size, cfg.precision)
            record.update({f"val/{k}": v for k, v in val.items()})
            record["val_acc"] = statistics.fmean(val.values()) if val else float("nan")
            # Ties go to the later checkpoint: it has seen more data at equal validation skill.
            if not val or record["val_acc"] >= best_acc:
                best_state, best_step, best_acc = _clone_state(model), step, record["val_acc"]
            model.train()
        history.append(record)
        steps.update(images=len(labels), loss=record["loss"])
        scalars.write(step, record)
        if checkpoint.due(step, cfg.steps):
            checkpoint.save({"step": step, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                             "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                             "streams": {name: stream.state_dict() for name, stream in streams.items()},
                             "best_state": best_state, "best_step": best_step, "best_acc": best_acc,
                             "history": history, "observers": {o.name: o.state_dict() for o in observers},
                             "wall_time_s": checkpoint.wall_time_s(start)})

    checkpoint.finish()
    scalars.close()
    for stream in streams.values():
        stream.close()
    return TrainResult(best_state=best_state, final_state=_clone_state(model), best_step=best_step,
                       best_val_acc=best_acc, history=history,
                       wall_time_s=checkpoint.wall_time_s(start))


def _restore_observers(observers: Sequence[TrajectoryObserver], saved: Mapping[str, Any], path: Path | None,
                       device: torch.device) -> None:
    missing = [o.name for o in observers if o.name not in saved]
    if missing:
        raise ValueError(f"cannot resume from {path}: it was saved without observers {missing} (the methods changed "
                         "since); delete it to start this run afresh")
    for observer in observers:
        # Checkpoints load on the CPU: averages rejoin the run's device before they grow again.
        observer.load_state_dict(_on_device(saved[observer.name], device))


def _on_device(value: Any, device: torch.device) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, dict):
        return {k: _on_device(v, device) for k, v in value.items()}
    if isinstance(value, list):
        return [_on_device(v, device) for v in value]
    return value


def copy_model(model: Classifier) -> Classifier:
    """An independent copy (separate parameters) sharing nothing with `model`."""
    return copy.deepcopy(model)
