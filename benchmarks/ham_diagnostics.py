"""HAM's training diagnostics over a bench run: what SAE borrowed, what OPA did to sign conflicts.

Reads every logs/seed*/<domain>/ham*.csv of a run directory (one per HAM training: ham.csv for
HAM itself, ham_<label>.csv for the ablations that train) and prints one row per training:
samples borrowed per model per step after SAE's warm-up, the sign-conflict rate of the models'
updates against their mean at the last step, and the sign loss against the CE loss.

    python benchmarks/ham_diagnostics.py runs/bench-pacs-cpu
"""

from __future__ import annotations

import argparse
import csv
import statistics
from collections import defaultdict
from pathlib import Path


def summarize(path: Path, warmup: int) -> dict[str, float]:
    """Means over one HAM log: borrowed/step (after warm-up), final conflicts, loss ratio."""
    rows = list(csv.DictReader(path.open()))
    if not rows:
        return {}
    late = [r for r in rows if int(r["step"]) > warmup] or rows
    borrowed = [k for k in rows[0] if k.startswith("borrowed/")]
    sign = [k for k in rows[0] if k.startswith("loss_sign/")]
    ce = [k for k in rows[0] if k.startswith("loss_ce/")]

    def mean(keys: list[str], subset: list[dict]) -> float:
        values = [float(r[k]) for r in subset for k in keys if r.get(k) not in (None, "")]
        return statistics.fmean(values) if values else float("nan")

    return {"borrowed": mean(borrowed, late), "conflict_last": float(rows[-1]["sign_conflict"]),
            "sign_loss": mean(sign, rows), "ce_loss": mean(ce, rows)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--warmup", type=int, default=20, help="SAE warm-up steps to leave out of the borrow mean")
    args = parser.parse_args()
    table: dict[str, list[dict[str, float]]] = defaultdict(list)
    for path in sorted(args.run_dir.glob("logs/seed*/*/ham*.csv")):
        summary = summarize(path, args.warmup)
        if summary:
            table[path.stem].append(summary)
    if not table:
        raise SystemExit(f"no logs/seed*/*/ham*.csv under {args.run_dir}")
    print("| training | runs | borrowed / model / step | sign conflicts at the end | sign loss | CE loss |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, runs in sorted(table.items()):
        def avg(key: str) -> float:
            return statistics.fmean(r[key] for r in runs)
        print(f"| {name} | {len(runs)} | {avg('borrowed'):.1f} | {avg('conflict_last'):.3f} | "
              f"{avg('sign_loss'):.2e} | {avg('ce_loss'):.3f} |")


if __name__ == "__main__":
    main()
