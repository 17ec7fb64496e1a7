"""HAM with one process per source model: v̄ by all-reduce, SAE batches by all-gather, merge on rank 0.

Same algorithm as the lockstep `train_ham`, spread over a torch.distributed process group
(gloo on CPU, nccl on GPU) with world size N_S: rank i owns source i (in `train_sets` order),
its model, optimizer, schedule, historical average and best checkpoint. Per step:

1. rank i draws its own source's batch from the stream train_ham would use for it (same
   `stream_seed(seed, i, ham_cfg.batch_seeds)`), and the N_S batches are all-gathered (sizes
   first, then zero-padded tensors) so SAE sees every source's batch, in source order;
2. v̄ = (Σ_i v_i) / N_S by one all-reduce of the flattened update vectors, taken before the
   rank's optimizer step, i.e. from every model's weights at the start of the step;
3. the per-source step itself is train_ham's (`ham._source_step`), so both loops share it.

At the end the final, historical and best states are gathered on rank 0, which merges them
with `merge_sources` and returns a `HamResult` equal (within float tolerance: the all-reduce
sums in another order than torch.stack(...).mean) to train_ham's; every other rank returns None.

Caveats: stochastic layers (dropout) draw from each rank's own global RNG, so they do not
reproduce the single-process run, where the N_S models share one RNG. With nccl, call
torch.cuda.set_device(local_rank) before this function (object collectives need it).
"""

from __future__ import annotations

import copy
import statistics
import time
from typing import Any, Sequence

import torch
import torch.distributed as dist
from torch import Tensor
from torch.utils.data import Dataset

from dgmerge.config import HamConfig, TrainConfig
from dgmerge.merging import HistoricalAverage
from dgmerge.models.classifier import Classifier
from dgmerge.progress import progress
from dgmerge.training import opa
from dgmerge.training.batches import BatchStream
from dgmerge.training.ham import (HamResult, _as_batch, _clone_state, _evaluate, _source_step, _trainable_state,
                                  _with_average, add_step_totals, merge_sources, new_source_run, stream_seed)

StateDict = dict[str, Tensor]
Batch = tuple[Tensor, Tensor]


def default_device() -> torch.device:
    """Where this rank computes: its current CUDA device under nccl, else the CPU."""
    if dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_gather_batches(images: Tensor, labels: Tensor, sources: Sequence[str]) -> dict[str, Batch]:
    """Every rank's batch, keyed by source in rank order; batches may differ in size.

    all_gather needs equal shapes, so the sizes are gathered first and each batch is
    zero-padded to the largest, then trimmed back. Trailing image dims must match across ranks.
    """
    world = dist.get_world_size()
    size = torch.tensor([labels.shape[0]], dtype=torch.long, device=labels.device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    counts = [int(s.item()) for s in sizes]
    largest = max(counts)
    padded_x = torch.cat([images, images.new_zeros((largest - len(images), *images.shape[1:]))])
    padded_y = torch.cat([labels, labels.new_zeros((largest - len(labels), *labels.shape[1:]))])
    all_x = [torch.empty_like(padded_x) for _ in range(world)]
    all_y = [torch.empty_like(padded_y) for _ in range(world)]
    dist.all_gather(all_x, padded_x.contiguous())
    dist.all_gather(all_y, padded_y.contiguous())
    return {name: (x[:n], y[:n]) for name, x, y, n in zip(sources, all_x, all_y, counts)}


@torch.no_grad()
def all_reduce_mean_update(params: Sequence[Tensor], theta0: Sequence[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
    """(this rank's v_i, v̄ = mean over ranks of v_i), with one all-reduce of a flat buffer."""
    update = opa.update_vector(params, theta0)
    flat = torch.cat([u.reshape(-1) for u in update])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= dist.get_world_size()
    mean = [chunk.view_as(u) for chunk, u in zip(flat.split([u.numel() for u in update]), update)]
    return update, mean


def _broadcast_state(model: torch.nn.Module) -> None:
    """Make every rank's θ0 rank 0's: ranks that built θ0 themselves (e.g. a fitted probe head)
    could differ in the last bits, and merging assumes one shared θ0."""
    with torch.no_grad():
        for tensor in model.state_dict().values():
            dist.broadcast(tensor, src=0)


def _gather_states(state: StateDict, sources: Sequence[str]) -> dict[str, StateDict] | None:
    """{source: state} of every rank on rank 0 (on the CPU), None elsewhere; one gather per tensor."""
    rank, world = dist.get_rank(), dist.get_world_size()
    gathered: list[StateDict] = [{} for _ in range(world)]
    for key, tensor in state.items():
        tensor = tensor.contiguous()
        buffers = [torch.empty_like(tensor) for _ in range(world)] if rank == 0 else None
        dist.gather(tensor, buffers, dst=0)
        if buffers is not None:
            for i, buffer in enumerate(buffers):
                gathered[i][key] = buffer.cpu()
    return dict(zip(sources, gathered)) if rank == 0 else None


def _gather_object(obj: Any) -> list[Any] | None:
    out: list[Any] | None = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(obj, out, dst=0)
    return out


def _merge_histories(histories: list[list[dict[str, Any]]], sources: Sequence[str]) -> list[dict[str, Any]]:
    """One record per step, as train_ham logs it: the union of the ranks' records plus the mean
    sign-conflict rate over sources."""
    merged = []
    for records in zip(*histories):
        record: dict[str, Any] = {}
        for part in records:
            record.update(part)
        record["sign_conflict"] = statistics.fmean(record[f"sign_conflict/{s}"] for s in sources)
        add_step_totals(record, sources)
        merged.append(record)
    return merged


def train_ham_distributed(theta0: Classifier, train_sets: dict[str, Dataset], val_sets: dict[str, Dataset],
                          train_cfg: TrainConfig, ham_cfg: HamConfig, seed: int,
                          device: torch.device | None = None, desc: str = "ham") -> HamResult | None:
    """Train source `train_sets[rank]`'s model on this rank with HAM; merge all of them on rank 0.

    Call it on every rank of an initialised process group whose world size is the number of
    sources, with the same arguments (θ0 is broadcast from rank 0, so other ranks' θ0 only
    needs the same architecture and trainable parameters). `theta0` is deep-copied and left
    untouched. Rank 0 returns the HamResult train_ham would return (all sources' final,
    historical and best states, the merged history); the other ranks return None.
    """
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError("train_ham_distributed needs an initialised torch.distributed process group "
                           "(run under torchrun, or call dist.init_process_group first)")
    sources = list(train_sets)
    rank, world = dist.get_rank(), dist.get_world_size()
    if world != len(sources):
        raise ValueError(f"distributed HAM runs one rank per source model: world size is {world} but there are "
                         f"{len(sources)} sources ({', '.join(sources)}); use --nproc_per_node {len(sources)}")
    strangers = [name for name in val_sets if name not in train_sets]
    if strangers:
        # Model selection may only see source out-splits: anything else is a target leak.
        raise ValueError(f"validation domain(s) {', '.join(strangers)} are not sources ({', '.join(sources)})")
    start = time.perf_counter()
    device = device or default_device()
    own = sources[rank]
    model = copy.deepcopy(theta0).to(device)
    _broadcast_state(model)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    if not names:
        raise ValueError("no trainable parameters: check the `trainable` setting")
    theta0_state = _clone_state(model)
    theta0_params = [theta0_state[n] for n in names]

    # Seeded as train_ham seeds it, so this rank's stream is the one train_ham draws for `own`.
    torch.manual_seed(seed)
    stream = BatchStream(train_sets[own], train_cfg.batch_size, seed=stream_seed(seed, rank, ham_cfg.batch_seeds))
    run = new_source_run(own, model, names, train_cfg, ham_cfg)

    history: list[dict[str, Any]] = []
    for step in progress(range(1, train_cfg.steps + 1), desc=f"{desc} [{own}]", total=train_cfg.steps):
        images, labels = _as_batch(next(stream))
        images, labels = images.to(device), labels.to(device)
        if ham_cfg.sae and step > ham_cfg.sae_warmup_steps and world > 1:
            batches = all_gather_batches(images, labels, sources)
            batches[own] = (images, labels)
        else:
            # SAE is off this step (every rank takes the same branch): empty stand-ins keep
            # the per-domain borrow counts in the log without moving any data.
            batches = {name: (images[:0], labels[:0]) for name in sources}
            batches[own] = (images, labels)
        update, mean = all_reduce_mean_update(run.params, theta0_params)
        record: dict[str, Any] = {"step": step, f"sign_conflict/{own}": opa.sign_conflict_rate(update, mean)}
        record.update(_source_step(run, batches, theta0_params, mean, ham_cfg, step))
        if run.average is not None:
            weight = run.average.update(_trainable_state(model, names))
            if isinstance(run.average, HistoricalAverage):
                record["hist_weight"] = weight
        record["lr"] = run.scheduler.get_last_lr()[0]
        if step % train_cfg.eval_every == 0 or step == train_cfg.steps:
            record.update(_evaluate(run, val_sets, train_cfg.eval_batch_size, step))
        history.append(record)

    finals = _gather_states(_clone_state(model), sources)
    historical = (_gather_states(_with_average(model, run.average), sources)
                  if run.average is not None else None)
    bests = _gather_states(run.best_state, sources)
    summaries = _gather_object({"history": history, "best_step": run.best_step, "best_acc": run.best_acc})
    if rank != 0:
        return None
    assert finals is not None and bests is not None and summaries is not None
    cpu_theta0 = {k: v.cpu() for k, v in theta0_state.items()}
    merged_from = {"beta": "historical", "ema": "ema", "none": "best"}[ham_cfg.historical]
    to_merge = historical if historical is not None else bests
    merged = merge_sources(cpu_theta0, [to_merge[s] for s in sources], names, ham_cfg)
    merged.info["world_size"] = world
    return HamResult(merged_state=merged, merged_from=merged_from, sources=sources, trainable=names,
                     final_states=finals, historical_states=historical, best_states=bests,
                     best_steps={s: summary["best_step"] for s, summary in zip(sources, summaries)},
                     best_val_accs={s: summary["best_acc"] for s, summary in zip(sources, summaries)},
                     history=_merge_histories([summary["history"] for summary in summaries], sources),
                     wall_time_s=time.perf_counter() - start)


__all__ = ["all_gather_batches", "all_reduce_mean_update", "default_device", "train_ham_distributed"]
