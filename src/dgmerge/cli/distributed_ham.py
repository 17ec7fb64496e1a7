"""Distributed HAM for one experiment cell: `torchrun --nproc_per_node N_S -m dgmerge.cli.distributed_ham CONFIG ...`.

    torchrun --nproc_per_node 3 -m dgmerge.cli.distributed_ham src/dgmerge/configs/pacs_mobilenetv2.yaml \
        --test-domain sketch --seed 0 [--set train.steps=500 ...] [--out runs/pacs]

N_S is the number of source domains (all domains but the test domain): one rank per source
model. Every rank builds the cell as `dgmerge run` does (dgmerge.methods.build_cell;
rank 0 first, so downloads and disk feature caches are written once), then trains its source
with `train_ham_distributed`. Rank 0 evaluates the merged model on the test domain and appends
the "ham" row to <output_dir>/results.jsonl with the same helpers as `dgmerge run`, so the
row joins the single-process ones in reports. A cell whose "ham" row is already in the results
(same experiment key) is skipped unless --force.

Backend: nccl when CUDA is available, gloo otherwise (--backend to choose).
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.distributed as dist

from dgmerge.config import ConfigError, ExperimentConfig, ham_train, parse_overrides
from dgmerge.data.imagefolder import scan_domains
from dgmerge.methods import build_cell
from dgmerge.methods.ham import training_summary
from dgmerge.pipeline.experiment import experiment_key, finished_methods, load_experiment, results_rows
from dgmerge.training.distributed import train_ham_distributed
from dgmerge.training.history import save_history


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line arguments of the distributed entry point."""
    parser = argparse.ArgumentParser(prog="python -m dgmerge.cli.distributed_ham", description=__doc__.split("\n\n")[0])
    parser.add_argument("config", type=Path, help="YAML experiment config (see src/dgmerge/configs/)")
    parser.add_argument("--test-domain", required=True, help="held-out domain; every other domain is a source")
    parser.add_argument("--seed", type=int, default=None, help="trial seed (default: the config's first seed)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config field, e.g. --set train.lr=1e-4 (repeatable)")
    parser.add_argument("--out", type=Path, default=None, help="run directory (overrides output_dir)")
    parser.add_argument("--backend", choices=("gloo", "nccl"), default=None,
                        help="process-group backend (default: nccl with CUDA, else gloo)")
    parser.add_argument("--timeout-min", type=float, default=30.0,
                        help="collective timeout in minutes (building a cell can take a while on rank 0)")
    parser.add_argument("--force", action="store_true", help="train even if the results already hold this cell")
    parser.add_argument("--device", default=None, choices=("auto", "cpu", "cuda"),
                        help="cpu, or cuda (each rank on GPU LOCAL_RANK); default: the config's train.device")
    return parser.parse_args(argv)


def init_from_env(backend: str | None = None, timeout: datetime.timedelta | None = None,
                  device: str = "auto") -> torch.device:
    """Join the process group torchrun describes (RANK, WORLD_SIZE, MASTER_ADDR/PORT); returns this rank's device.

    `device` is train.device: cpu keeps every rank on the CPU (gloo); auto or cuda put rank r on
    GPU LOCAL_RANK (nccl) when there are GPUs. A cuda:N index means nothing here: torchrun
    assigns one GPU per rank.
    """
    missing = [name for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if name not in os.environ]
    if missing:
        raise RuntimeError(f"{', '.join(missing)} not set: start this module with torchrun "
                           "(torchrun --nproc_per_node N_SOURCES -m dgmerge.cli.distributed_ham ...)")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"train.device is {device!r} but torch sees no GPU; use --device cpu")
    backend = backend or ("nccl" if torch.cuda.is_available() and device != "cpu" else "gloo")
    device = torch.device("cpu")
    if backend == "nccl":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    dist.init_process_group(backend, init_method="env://", timeout=timeout or datetime.timedelta(minutes=30))
    return device


def _broadcast_from_rank0(value: Any) -> Any:
    box = [value if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def run(cfg: ExperimentConfig, test_domain: str, seed: int, device: torch.device, force: bool = False) -> dict[str, Any] | None:
    """Train and record one HAM cell on every rank of the current group; rank 0 returns its result row.

    Returns None on the other ranks, and on every rank when the cell is already recorded.
    """
    rank, world = dist.get_rank(), dist.get_world_size()
    index = scan_domains(cfg.data.root / cfg.data.dataset)
    if test_domain not in index.domains:
        raise ValueError(f"test domain {test_domain!r} is not in {cfg.data.root / cfg.data.dataset} "
                         f"(domains: {', '.join(index.domains)})")
    sources = [d for d in index.domains if d != test_domain]
    if len(sources) != world:
        # Checked before building the cell: that can take minutes and would end in the same error.
        raise ValueError(f"{len(sources)} source domains ({', '.join(sources)}) need --nproc_per_node "
                         f"{len(sources)}, got a world size of {world}")
    key = experiment_key(cfg)
    results_path = cfg.output_dir / "results.jsonl"
    done = False
    if rank == 0 and not force:
        done = "ham" in finished_methods(results_rows(results_path), key).get((seed, test_domain), set())
    if _broadcast_from_rank0(done):
        if rank == 0:
            print(f"[skip] seed {seed}, test domain {test_domain}: ham already in {results_path} (--force to rerun)")
        return None

    # Rank 0 builds first so that weight downloads and disk feature caches are written once.
    if rank != 0:
        dist.barrier()
    cell = build_cell(cfg, index, test_domain, seed, key)
    cell.results_path = results_path
    if rank == 0:
        dist.barrier()
    start = time.perf_counter()
    result = train_ham_distributed(cell.trainable_copy(), cell.train_sets, cell.val_sets,
                                   ham_train(cfg.train, cfg.ham), cfg.ham, seed, device=device)
    if result is None:
        return None
    save_history(cell.logs_dir / "ham.csv", result.history)
    extra = {"merged_from": result.merged_from, "train_wall_time_s": round(result.wall_time_s, 3),
             **training_summary(result.history),
             "distributed": {"world_size": world, "backend": dist.get_backend()}}
    row = cell.record("ham", cell.loaded(result.merged_state), start, extra,
                      hparams={"ham": cfg.ham.model_dump(mode="json")})
    print(f"   ham (distributed, {world} ranks)  test acc {100 * row['test_acc']:5.1f}   "
          f"source val {100 * row['val_acc']:5.1f}   -> {results_path}")
    return row


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `python -m dgmerge.cli.distributed_ham` under torchrun; returns the exit code."""
    args = parse_args(argv)
    try:
        extra = parse_overrides(args.overrides)
        if args.out is not None:
            extra["output_dir"] = str(args.out)
        cfg = load_experiment(args.config, extra)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    seed = cfg.seeds[0] if args.seed is None else args.seed
    device = init_from_env(args.backend, datetime.timedelta(minutes=args.timeout_min),
                           args.device or cfg.train.device)
    # Everything this rank builds (θ0, caches, probe) goes to its own device, not to cuda:0.
    cfg.train.device = str(device)
    try:
        run(cfg, args.test_domain, seed, device, force=args.force)
        # Rank 0 evaluates while the others wait here: tearing the group down under a peer
        # that still uses it can abort that peer (gloo).
        dist.barrier()
    except (ConfigError, FileNotFoundError, ValueError) as exc:
        print(f"error (rank {dist.get_rank()}): {exc}", file=sys.stderr)
        return 2
    finally:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
