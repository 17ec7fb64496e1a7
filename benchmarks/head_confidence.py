"""Is the frozen probe head more confident on the samples it was fitted on? (issue 11, the head question)

SAE borrows a foreign sample when the model's max-softmax on it beats the model's mean on its own
batch (τ_i). With a linear probe fitted on the pooled source training splits, the foreign samples
SAE scores are exactly the probe's training samples; CLIP's text head never saw its samples. At θ0
this script measures the probe's mean max-softmax (and accuracy) on

- the samples the probe was fitted on,
- the samples SAE scores (the training sets fine-tuning draws from),
- the sources' out-splits (never fitted, never trained on),

for probe.fit_on "train" (the probe sees what SAE scores) and "probe_split" (a disjoint split
fits the probe). Source samples only: the held-out domain takes no part.

    python benchmarks/head_confidence.py [--seed 0 ...] [--cache-dir runs/feature_cache]
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset

from dgmerge.data.imagefolder import scan_domains
from dgmerge.methods.build import build_cell
from dgmerge.pipeline.bench import BenchOptions, pacs_cpu_config


@torch.no_grad()
def confidence_and_accuracy(model: torch.nn.Module, data: Dataset, batch_size: int = 256) -> tuple[float, float]:
    """Mean max-softmax and accuracy of `model` on `data`."""
    model.eval()
    device = next(model.parameters()).device
    conf, correct, total = 0.0, 0, 0
    for x, y in DataLoader(data, batch_size=batch_size):
        probs = model(x.to(device)).float().softmax(dim=1)
        conf += probs.max(dim=1).values.sum().item()
        correct += (probs.argmax(dim=1).cpu() == torch.as_tensor(y)).sum().item()
        total += len(x)
    return conf / total, correct / total


def measure(opts: BenchOptions, seed: int, domain: str, fit_on: str) -> dict[str, tuple[float, float]]:
    cfg = pacs_cpu_config(opts)
    cfg.probe.fit_on = fit_on
    index = scan_domains(cfg.data.root / cfg.data.dataset)
    cell = build_cell(cfg, index, domain, seed, key="head-confidence")
    scored = ConcatDataset(list(cell.train_sets.values()))
    out = ConcatDataset(list(cell.val_sets.values()))
    fitted = ConcatDataset(list(cell.probe_sets.values()))
    return {"fitted": confidence_and_accuracy(cell.theta0, fitted),
            "scored by SAE": confidence_and_accuracy(cell.theta0, scored),
            "out-split": confidence_and_accuracy(cell.theta0, out)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, action="append", help="trial seed; repeat (default 0)")
    parser.add_argument("--data-root", type=Path, default=None)
    parser.add_argument("--weights", type=Path, default=None)
    parser.add_argument("--cache-dir", type=Path, default=Path("runs/feature_cache"))
    args = parser.parse_args()
    opts = BenchOptions(data_root=args.data_root, weights=args.weights, out=Path("runs/head-confidence"),
                        cache_dir=args.cache_dir)
    cfg = pacs_cpu_config(opts)
    domains = scan_domains(cfg.data.root / cfg.data.dataset).domains
    results: dict[str, dict[str, list[tuple[float, float]]]] = {}
    for fit_on in ("train", "probe_split"):
        for seed in args.seed or [0]:
            for domain in domains:
                for name, value in measure(opts, seed, domain, fit_on).items():
                    results.setdefault(fit_on, {}).setdefault(name, []).append(value)
    cells = len(args.seed or [0]) * len(domains)
    print(f"θ0's probe head on {cfg.data.dataset} sources, mean over {cells} (seed, held-out domain) cells; "
          f"seeds {args.seed or [0]}; torch {torch.__version__}")
    print("| probe fitted on | samples | mean max-softmax | accuracy % |\n|---|---|---:|---:|")
    for fit_on, by_name in results.items():
        for name, values in by_name.items():
            conf = statistics.fmean(c for c, _ in values)
            acc = statistics.fmean(a for _, a in values)
            print(f"| {fit_on} | {name} | {conf:.3f} | {100 * acc:.1f} |")


if __name__ == "__main__":
    main()
