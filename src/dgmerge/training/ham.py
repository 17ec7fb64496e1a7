"""HAM's lockstep trainer: N_S source models from one θ0, SAE + OPA + historical averaging, merge.

Every step draws one batch per source domain (each domain's batch is drawn once and shared by
all models), computes v̄ from all models' weights at the start of the step, then updates each
model i in turn with its own AdamW + cosine schedule on

    L_i = CE over B'_i (SAE, Eq. 2-3) + λ · L_sign(θ_i − θ0, v̄) (OPA, Eq. 5)

and folds θ_i into its historical average (Eq. 7, Beta(β, β) weights, or an EMA). Each model
only reads the others' weights through v̄ taken before anyone moved, so the order in which the
models are updated within a step does not matter. At the end the N_S historical models (or
the best-on-validation checkpoints with historical: none) are merged with any registered
merge method (RHM by default).

Reproducing the single-source baseline: with sae and opa off and batch_seeds
"single_source", model i sees exactly the batches `fine_tune(model, {source_i: data}, ...)`
sees with the same seed (its stream is seeded seed*1000, index 0 of a one-domain dict) and
takes the same optimizer steps, so its final and best weights are identical. This holds for
models without stochastic layers (dropout): the global RNG is shared by the N_S models here.
"""

from __future__ import annotations

import copy
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.utils.data import Dataset

from dgmerge.config import HamConfig, TrainConfig
from dgmerge.device import autocast, check_precision, grad_scaler, resolve_device, to_device
from dgmerge.merging import EMA, HistoricalAverage, MergedState
from dgmerge.merging.scope import merge_subset
from dgmerge.models.classifier import Classifier
from dgmerge.progress import progress_steps
from dgmerge.training import opa
from dgmerge.training.batches import BatchStream
from dgmerge.training.checkpoint import NO_CHECKPOINT, Checkpointer
from dgmerge.training.finetune import validation_accuracy
from dgmerge.training.scalars import open_scalar_log
from dgmerge.training.sae import max_confidence, select_confident

StateDict = dict[str, Tensor]
Batch = tuple[Tensor, Tensor]


@dataclass
class HamResult:
    """The merged model and every per-source model HAM produced, with the training history.

    States are full state dicts of the Classifier (load with `model.load_state_dict`).
    `historical_states` is None with historical: none; `merged_from` says which per-source
    states were merged ("historical", "ema" or "best").
    """

    merged_state: MergedState
    merged_from: str
    sources: list[str]
    trainable: list[str]
    final_states: dict[str, StateDict]
    historical_states: dict[str, StateDict] | None
    best_states: dict[str, StateDict]
    best_steps: dict[str, int]
    best_val_accs: dict[str, float]
    history: list[dict[str, Any]] = field(default_factory=list)
    wall_time_s: float = 0.0


def stream_seed(seed: int, index: int, scheme: str = "single_source") -> int:
    """Seed of source `index`'s BatchStream, matching fine_tune's seed*1000 + domain index.

    "single_source": as a one-domain fine_tune draws it (index 0 there) — the single_source
    baseline's batches; "erm": as the pooled ERM run draws domain `index`.
    """
    if scheme == "single_source":
        return seed * 1000
    if scheme == "erm":
        return seed * 1000 + index
    raise ValueError(f"unknown batch_seeds scheme {scheme!r}: use single_source or erm")


@dataclass
class _Source:
    """One source model with its optimizer, schedule, running average and best checkpoint."""

    name: str
    model: Classifier
    params: list[nn.Parameter]
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    average: HistoricalAverage | EMA | None
    best_state: StateDict
    scaler: torch.amp.GradScaler
    precision: str = "fp32"
    best_step: int = 0
    best_acc: float = -1.0

    @property
    def device(self) -> torch.device:
        return self.params[0].device


def _clone_state(model: nn.Module) -> StateDict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _source_models(models_or_theta0: Classifier | Sequence[Classifier], sources: list[str]) -> list[Classifier]:
    """Deep copies of θ0, or the given models after checking that they all start at one θ0."""
    if isinstance(models_or_theta0, nn.Module):
        return [copy.deepcopy(models_or_theta0) for _ in sources]
    models = list(models_or_theta0)
    if len(models) != len(sources):
        raise ValueError(f"got {len(models)} models for {len(sources)} sources ({', '.join(sources)})")
    first = models[0].state_dict()
    first_trainable = [n for n, p in models[0].named_parameters() if p.requires_grad]
    for name, other in zip(sources[1:], models[1:]):
        state = other.state_dict()
        if state.keys() != first.keys() or not all(torch.equal(first[k], state[k]) for k in first):
            raise ValueError(f"the model for source {name!r} does not start from the same θ0 as the first")
        if [n for n, p in other.named_parameters() if p.requires_grad] != first_trainable:
            raise ValueError(f"the model for source {name!r} trains other parameters than the first")
    return models


def _average(ham_cfg: HamConfig, train_cfg: TrainConfig) -> HistoricalAverage | EMA | None:
    # "cpu" keeps the N_S running averages off a small GPU; "same" keeps them with the models.
    device = "cpu" if train_cfg.history_device == "cpu" else None
    if ham_cfg.historical == "beta":
        return HistoricalAverage(total_steps=train_cfg.steps, beta=ham_cfg.beta, device=device)
    if ham_cfg.historical == "ema":
        return EMA(decay=ham_cfg.ema_decay, device=device)
    return None


def new_source_run(name: str, model: Classifier, names: list[str], train_cfg: TrainConfig,
                   ham_cfg: HamConfig) -> _Source:
    """One source's model with its AdamW, cosine schedule, running average and best checkpoint.

    The model must already be on its training device; the fp16 loss scaler is per model, as
    each model takes its own optimizer steps.
    """
    params = list(_trainable_state(model, names).values())
    optimizer = torch.optim.AdamW(params, lr=train_cfg.lr, weight_decay=train_cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=train_cfg.steps)
    device = params[0].device
    run = _Source(name, model, params, optimizer, scheduler, _average(ham_cfg, train_cfg),
                  best_state=_clone_state(model), scaler=grad_scaler(device, train_cfg.precision),
                  precision=train_cfg.precision)
    if run.average is not None:
        # θ0 is the trajectory's first point (t = 0), as in CLIPood's GeneralMovingAverage.
        run.average.update(_trainable_state(model, names))
    model.train()
    return run


def _trainable_state(model: nn.Module, names: list[str]) -> dict[str, Tensor]:
    params = dict(model.named_parameters())
    return {n: params[n] for n in names}


def _with_average(model: nn.Module, average: HistoricalAverage | EMA) -> StateDict:
    """The live model's state with its trainable tensors replaced by their running average.

    Only trainable tensors are averaged: frozen tensors stay bit-identical to θ0 (averaging a
    constant in float can move it by an ulp, which a merge would read as an update). Averages
    kept on the CPU come back to the model's device, so the merge sees one device.
    """
    live = _clone_state(model)
    device = next(iter(live.values())).device if live else torch.device("cpu")
    return {**live, **to_device(average.state_dict(), device)}


def train_ham(models_or_theta0: Classifier | Sequence[Classifier], train_sets: dict[str, Dataset],
              val_sets: dict[str, Dataset], train_cfg: TrainConfig, ham_cfg: HamConfig, seed: int,
              desc: str = "ham", checkpoint: Checkpointer = NO_CHECKPOINT, num_workers: int = 0,
              log_dir: Path | None = None) -> HamResult:
    """Train one model per source domain in lockstep with HAM and merge them.

    `models_or_theta0`: θ0 (a Classifier with its trainable parameters chosen, see
    set_trainable; it is deep-copied per source and left untouched), or one model per source in
    `train_sets` order, all at the same θ0 (trained in place). `val_sets` are the source
    out-splits: each model's best checkpoint is the one with the best mean accuracy over all of
    them (DomainBed training-domain validation, as fine_tune). The target domain must not be in
    either dict. Same seed → identical weights. With a `checkpoint`, the run saves itself every
    few steps and resumes from the last save with the same final weights. Models, batches, v̄,
    SAE's scores, the averages (unless train_cfg.history_device is cpu) and the merge live on
    `train_cfg.device`; forward passes run in `train_cfg.precision`.
    """
    sources = list(train_sets)
    if not sources:
        raise ValueError("train_ham needs at least one source domain")
    strangers = [name for name in val_sets if name not in train_sets]
    if strangers:
        # Model selection may only see source out-splits: anything else is a target leak.
        raise ValueError(f"validation domain(s) {', '.join(strangers)} are not sources ({', '.join(sources)})")
    start = time.perf_counter()
    device = resolve_device(train_cfg.device)
    check_precision(train_cfg.precision, device)
    models = [model.to(device) for model in _source_models(models_or_theta0, sources)]
    names = [n for n, p in models[0].named_parameters() if p.requires_grad]
    if not names:
        raise ValueError("no trainable parameters: check the `trainable` setting")
    theta0_state = _clone_state(models[0])
    theta0_params = [theta0_state[n] for n in names]

    torch.manual_seed(seed)
    streams = {name: BatchStream(data, train_cfg.batch_size, seed=stream_seed(seed, j, ham_cfg.batch_seeds),
                                 num_workers=num_workers, pin_memory=device.type == "cuda")
               for j, (name, data) in enumerate(train_sets.items())}
    runs = [new_source_run(name, model, names, train_cfg, ham_cfg) for name, model in zip(sources, models)]

    history: list[dict[str, Any]] = []
    first_step = 1
    saved = checkpoint.load()
    if saved is not None:
        _restore(runs, streams, saved)
        history, first_step = saved["history"], saved["step"] + 1
    scalars = open_scalar_log(log_dir)
    steps = progress_steps(range(first_step, train_cfg.steps + 1), desc=desc, total=train_cfg.steps,
                           every_s=train_cfg.log_every_s)
    for step in steps:
        batches = {name: _as_batch(next(stream), device) for name, stream in streams.items()}
        record: dict[str, Any] = {"step": step}
        # v̄ from every model's weights before any of them moves in this step.
        mean, conflicts = opa.mean_update_and_conflicts([run.params for run in runs], theta0_params)
        record["sign_conflict"] = statistics.fmean(conflicts)
        for run, conflict in zip(runs, conflicts):
            record[f"sign_conflict/{run.name}"] = conflict
        for run in runs:
            record.update(_source_step(run, batches, theta0_params, mean, ham_cfg, step))
            if run.average is not None:
                weight = run.average.update(_trainable_state(run.model, names))
                if isinstance(run.average, HistoricalAverage):
                    record["hist_weight"] = weight
        record["lr"] = runs[0].scheduler.get_last_lr()[0]
        if step % train_cfg.eval_every == 0 or step == train_cfg.steps:
            for run in runs:
                record.update(_evaluate(run, val_sets, train_cfg.eval_batch_size, step))
        add_step_totals(record, sources)
        history.append(record)
        steps.update(images=sum(len(b[1]) for b in batches.values()), loss=record["loss"])
        scalars.write(step, record)
        if checkpoint.due(step, train_cfg.steps):
            checkpoint.save({"step": step, "history": history, "runs": [_export(run) for run in runs],
                             "streams": {name: stream.state_dict() for name, stream in streams.items()},
                             "wall_time_s": checkpoint.wall_time_s(start)})
    checkpoint.finish()
    scalars.close()
    for stream in streams.values():
        stream.close()

    historical = ({run.name: _with_average(run.model, run.average) for run in runs}
                  if ham_cfg.historical != "none" else None)
    result = HamResult(merged_state=MergedState({}), merged_from=MERGED_FROM[ham_cfg.historical], sources=sources,
                       trainable=names, final_states={run.name: _clone_state(run.model) for run in runs},
                       historical_states=historical, best_states={run.name: run.best_state for run in runs},
                       best_steps={run.name: run.best_step for run in runs},
                       best_val_accs={run.name: run.best_acc for run in runs}, history=history)
    result.merged_state = merge_trained(result, theta0_state, ham_cfg)
    result.wall_time_s = checkpoint.wall_time_s(start)
    return result


def add_step_totals(record: dict[str, Any], sources: Sequence[str]) -> None:
    """The step's totals over the sources: mean loss and samples borrowed (logged, plotted, shown)."""
    record["loss"] = statistics.fmean(record[f"loss/{s}"] for s in sources)
    record["borrowed"] = sum(record[f"borrowed/{s}"] for s in sources)


# Which per-source states a merge takes, by ham_cfg.historical.
MERGED_FROM = {"beta": "historical", "ema": "ema", "none": "best"}


def merge_trained(result: HamResult, theta0_state: StateDict, ham_cfg: HamConfig) -> MergedState:
    """Merge a finished run's per-source models as `ham_cfg` says (historical or best, method).

    `ham_cfg` may differ from the run's own config in merge-time fields only (see
    dgmerge.config.can_reuse): this is how ablations such as TIES-instead-of-RHM or best-checkpoint
    merging reuse one training run.
    """
    if ham_cfg.historical == "none":
        states = result.best_states
    elif result.historical_states is None or result.merged_from != MERGED_FROM[ham_cfg.historical]:
        raise ValueError(f"this run kept no {ham_cfg.historical!r} averages (it merged {result.merged_from!r})")
    else:
        states = result.historical_states
    return merge_sources(theta0_state, [states[s] for s in result.sources], result.trainable, ham_cfg)


def _export(run: _Source) -> dict[str, Any]:
    return {"model": run.model.state_dict(), "optimizer": run.optimizer.state_dict(),
            "scheduler": run.scheduler.state_dict(), "scaler": run.scaler.state_dict(),
            "best_state": run.best_state, "best_step": run.best_step,
            "best_acc": run.best_acc, "average": run.average.export() if run.average is not None else None}


def _restore(runs: list[_Source], streams: dict[str, BatchStream], saved: dict[str, Any]) -> None:
    for run, state in zip(runs, saved["runs"]):
        run.model.load_state_dict(state["model"])
        run.optimizer.load_state_dict(state["optimizer"])
        run.scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            run.scaler.load_state_dict(state["scaler"])
        # A checkpoint loads onto the CPU; the best state rejoins its model's device.
        run.best_state = to_device(state["best_state"], run.device)
        run.best_step, run.best_acc = state["best_step"], state["best_acc"]
        if run.average is not None:
            run.average.restore(state["average"])
    for name, stream in streams.items():
        stream.load_state_dict(saved["streams"][name])


def merge_sources(theta0_state: StateDict, states: Sequence[StateDict], trainable: Sequence[str],
                  ham_cfg: HamConfig) -> MergedState:
    """merge(ham_cfg.merge_method, θ0, states, **merge_hparams) over ham_cfg.merge_scope.

    With scope "trainable" only the trained tensors are merged and the rest is θ0's.
    """
    keys = list(trainable) if ham_cfg.merge_scope == "trainable" else None
    merged = merge_subset(ham_cfg.merge_method, theta0_state, states, keys, **ham_cfg.merge_hparams)
    merged.info.update({"method": ham_cfg.merge_method, "scope": ham_cfg.merge_scope})
    return merged


def _as_batch(batch: Sequence[Any], device: torch.device | None = None) -> Batch:
    images, labels = batch[0], torch.as_tensor(batch[1])
    if device is None:
        return images, labels
    return images.to(device, non_blocking=True), labels.to(device, non_blocking=True)


def _source_step(run: _Source, batches: dict[str, Batch], theta0_params: list[Tensor], mean: list[Tensor],
                 ham_cfg: HamConfig, step: int) -> dict[str, Any]:
    """One optimizer step of source `run.name`; returns its log entries."""
    name, model = run.name, run.model
    images, labels = batches[name]
    device = run.device
    with autocast(device, run.precision):
        logits = model(images)
    logits = logits.float()
    per_sample = F.cross_entropy(logits, labels, reduction="none")
    # τ_i comes from the logits of the gradient forward: no second pass over B_i.
    own_confidence = max_confidence(logits)
    foreign = {j: b for j, b in batches.items() if j != name}
    counts = {j: 0 for j in foreign}
    if ham_cfg.sae and step > ham_cfg.sae_warmup_steps and foreign:
        with torch.no_grad(), autocast(device, run.precision):
            confidence = max_confidence(model(torch.cat([b[0] for b in foreign.values()])).float())
        sizes = [len(b[1]) for b in foreign.values()]
        selection = select_confident(own_confidence, dict(zip(foreign, confidence.split(sizes))),
                                     margin=ham_cfg.sae_margin if ham_cfg.sae_rule == "margin" else 0.0,
                                     max_borrow=ham_cfg.sae_max_borrow)
        counts = selection.counts()
        if selection.total:
            # Only the borrowed samples go through a second (gradient) forward.
            borrowed_x = torch.cat([foreign[j][0][idx] for j, idx in selection.indices.items()])
            borrowed_y = torch.cat([foreign[j][1][idx] for j, idx in selection.indices.items()])
            with autocast(device, run.precision):
                borrowed_logits = model(borrowed_x)
            extra = F.cross_entropy(borrowed_logits.float(), borrowed_y, reduction="none")
            per_sample = torch.cat([per_sample, extra])
    loss_ce = per_sample.mean()
    loss = loss_ce
    loss_sign = 0.0
    if ham_cfg.opa:
        sign = opa.sign_loss(run.params, theta0_params, mean, ham_cfg.opa_mode)
        loss = loss_ce + ham_cfg.opa_weight * sign
        loss_sign = sign.item()
    run.optimizer.zero_grad(set_to_none=True)
    # A disabled scaler (fp32, bf16) passes the loss and the step through unchanged.
    run.scaler.scale(loss).backward()
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.scheduler.step()

    record: dict[str, Any] = {f"loss/{name}": loss.item(), f"loss_ce/{name}": loss_ce.item(),
                              f"loss_sign/{name}": loss_sign, f"tau/{name}": float(own_confidence.mean()),
                              f"borrowed/{name}": sum(counts.values())}
    record.update({f"borrow/{name}<-{j}": n for j, n in counts.items()})
    return record


def _evaluate(run: _Source, val_sets: dict[str, Dataset], batch_size: int, step: int) -> dict[str, Any]:
    """Validation accuracy of one source model; keeps its best checkpoint (ties → later step)."""
    val = validation_accuracy(run.model, val_sets, batch_size, run.precision)
    acc = statistics.fmean(val.values()) if val else float("nan")
    if not val or acc >= run.best_acc:
        run.best_state, run.best_step, run.best_acc = _clone_state(run.model), step, acc
    run.model.train()
    record: dict[str, Any] = {f"val/{run.name}/{domain}": v for domain, v in val.items()}
    record[f"val_acc/{run.name}"] = acc
    return record


__all__ = ["HamConfig", "HamResult", "MERGED_FROM", "merge_sources", "merge_trained", "stream_seed", "train_ham"]
