"""How far each saved model of a run moved from θ0: ‖θ − θ0‖₂ over the encoder's parameters.

Rows written since 2026-12-06 record this as `update_norm`; this script measures it on the saved
models of older runs (for example the convergence budgets), so that an under-trained comparison
shows: averaging and trimming shorten an update, and a method can gain or lose by its update's
length rather than its direction. θ0's encoder is the pretrained weights file; frozen tensors
are equal to it and add nothing, BatchNorm statistics are buffers and are left out. The head is
left out too (the linear probe is not saved), so the figure matches `update_norm` for
frozen-head runs.

    python benchmarks/update_norms.py runs/convergence/steps1000 runs/convergence/steps2000 \
        --weights ../shared/weights/mobilenetv2_100_imagenet_tflite.safetensors
"""

from __future__ import annotations

import argparse
import math
import statistics
from collections import defaultdict
from pathlib import Path

from safetensors import safe_open
from safetensors.torch import load_file

BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


def update_norm(model: Path, theta0: dict) -> float:
    """‖θ − θ0‖₂ over the encoder parameters of one saved model file."""
    total = 0.0
    with safe_open(str(model), "pt") as f:
        for key in f.keys():
            name = key.removeprefix("encoder.")
            if name == key or name.endswith(BUFFERS):
                continue
            if name not in theta0:
                raise KeyError(f"{model}: {key} has no tensor {name} in the θ0 weights file (wrong --weights?)")
            total += float((f.get_tensor(key).double() - theta0[name].double()).pow(2).sum())
    return math.sqrt(total)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run directories with models/seed*/<domain>/*.safetensors")
    parser.add_argument("--weights", type=Path,
                        default=Path("../shared/weights/mobilenetv2_100_imagenet_tflite.safetensors"))
    args = parser.parse_args()
    theta0 = load_file(str(args.weights))
    print("| run | model | cells | ‖θ − θ0‖₂ mean | min | max |")
    print("|---|---|---:|---:|---:|---:|")
    for run in args.runs:
        norms: dict[str, list[float]] = defaultdict(list)
        for model in sorted(run.glob("models/seed*/*/*.safetensors")):
            # The source models are one group: their mean is what a merge starts from.
            name = "source (each)" if model.stem.startswith("source_") else model.stem
            norms[name].append(update_norm(model, theta0))
        if not norms:
            raise SystemExit(f"{run}: no models/seed*/<domain>/*.safetensors (was the run made with save_models?)")
        for name, values in sorted(norms.items()):
            print(f"| {run} | {name} | {len(values)} | {statistics.fmean(values):.2f} | {min(values):.2f} | "
                  f"{max(values):.2f} |")


if __name__ == "__main__":
    main()
