"""Wall time and peak RSS of every merge method on N ViT-B/16-shaped (86M-parameter) state dicts.

Each method runs in its own subprocess, so its peak RSS (ru_maxrss of that process) is its
own; the worker also reports the RSS right after building the models, so the merge's own
overhead can be read off. Models are synthetic (θ0 ~ N(0, 0.02²), θ_i = θ0 + N(0, 0.001²)):
speed and memory do not depend on the values.

    python benchmarks/merge_speed.py                       # all methods, N = 5, table to stdout
    python benchmarks/merge_speed.py --methods ties rhm    # a subset
    python benchmarks/merge_speed.py --mode files          # merge_files on safetensors files
    python benchmarks/merge_speed.py --worker ties         # one measurement (used internally)

Modes: "memory" calls merge() on state dicts held in memory (N + 1 models resident before
the merge starts); "files" calls merge_files() the way `dgmerge merge` does, with θ0 loaded
and the fine-tuned safetensors read lazily tensor by tensor, and includes writing the output.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

DIM, DEPTH, MLP, PATCH, TOKENS = 768, 12, 3072, 16, 197

# name -> (method, hparams); statistics for regmean/fisher are synthesised in the worker.
CASES: dict[str, tuple[str, dict]] = {
    "average": ("average", {}),
    "task_arithmetic": ("task_arithmetic", {"scale": 0.3}),
    "ties": ("ties", {"keep": 0.2}),
    "ties (tensor-level)": ("ties", {"keep": 0.2, "level": "tensor"}),
    "dare (+task_arithmetic)": ("dare", {"drop": 0.9, "scale": 0.3}),
    "rhm": ("rhm", {"trim": 0.2}),
    "rhm (sampled 1e7)": ("rhm", {"trim": 0.2, "threshold": "sampled"}),
    "rhm (layer-level)": ("rhm", {"trim": 0.2, "level": "tensor"}),
    "regmean": ("regmean", {"alpha": 0.9}),
    "fisher": ("fisher", {}),
    "tsv": ("tsv", {}),
    "score": ("score", {}),
    "lwptv (+task_arithmetic)": ("lwptv", {"eta": 0.01, "scale": 0.3}),
    "greedy_soup": ("greedy_soup", {}),
}


def vit_b16_shapes() -> dict[str, tuple[int, ...]]:
    """timm-style ViT-B/16 backbone tensor shapes (no classifier head): 85.8M parameters."""
    shapes: dict[str, tuple[int, ...]] = {
        "cls_token": (1, 1, DIM), "pos_embed": (1, TOKENS, DIM),
        "patch_embed.proj.weight": (DIM, 3, PATCH, PATCH), "patch_embed.proj.bias": (DIM,),
    }
    for b in range(DEPTH):
        p = f"blocks.{b}."
        shapes.update({
            p + "norm1.weight": (DIM,), p + "norm1.bias": (DIM,),
            p + "attn.qkv.weight": (3 * DIM, DIM), p + "attn.qkv.bias": (3 * DIM,),
            p + "attn.proj.weight": (DIM, DIM), p + "attn.proj.bias": (DIM,),
            p + "norm2.weight": (DIM,), p + "norm2.bias": (DIM,),
            p + "mlp.fc1.weight": (MLP, DIM), p + "mlp.fc1.bias": (MLP,),
            p + "mlp.fc2.weight": (DIM, MLP), p + "mlp.fc2.bias": (DIM,),
        })
    shapes.update({"norm.weight": (DIM,), "norm.bias": (DIM,)})
    return shapes


def make_models(n_models: int) -> tuple[dict, list[dict]]:
    gen = torch.Generator().manual_seed(0)
    shapes = vit_b16_shapes()
    pre = {k: torch.randn(s, generator=gen).mul_(0.02) for k, s in shapes.items()}
    fts = []
    for _ in range(n_models):
        fts.append({k: torch.randn(v.shape, generator=gen).mul_(1e-3).add_(v) for k, v in pre.items()})
    _release_freed_memory()
    return pre, fts


def _release_freed_memory() -> None:
    """Hand freed heap pages back to the OS so RSS before the merge is only the live models."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


def write_models(directory: Path, n_models: int) -> None:
    from dgmerge.files import save_state_dict

    pre, fts = make_models(n_models)
    save_state_dict(directory / "pretrained.safetensors", pre, force=True)
    for i, state in enumerate(fts):
        save_state_dict(directory / f"model{i}.safetensors", state, force=True)


def _statistics(method: str, pre: dict, n_models: int) -> dict:
    gen = torch.Generator().manual_seed(1)
    if method == "regmean":
        grams = []
        for _ in range(n_models):
            g = {}
            for key, t in pre.items():
                if t.dim() == 2 and key.startswith("blocks."):
                    a = torch.randn(t.shape[1], 32, generator=gen)
                    g[key] = a @ a.T / 32 + torch.diag(torch.rand(t.shape[1], generator=gen))
            grams.append(g)
        return {"grams": grams}
    if method == "fisher":
        return {"fishers": [{k: torch.rand(t.shape, generator=gen) for k, t in pre.items()}
                            for _ in range(n_models)]}
    if method == "greedy_soup":
        return {"evaluate": lambda s: -float(s["norm.weight"].sum())}
    return {}


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def worker(case: str, n_models: int, files: str | None) -> dict:
    from dgmerge.files import read_state_dict
    from dgmerge.merging import merge, merge_files

    runtime = rss_mb()  # python + torch, before any tensor exists
    method, hparams = CASES[case]
    if files:
        directory = Path(files)
        pre = read_state_dict(directory / "pretrained.safetensors")  # only to build statistics
        hparams = {**hparams, **_statistics(method, pre, n_models)}
        model_mb = sum(t.numel() * t.element_size() for t in pre.values()) / 2**20
        params = sum(t.numel() for t in pre.values())
        del pre
        _release_freed_memory()
        before = rss_mb()
        cpu_start = time.process_time()
        start = time.perf_counter()
        merged = merge_files(method, directory / "pretrained.safetensors",
                             [directory / f"model{i}.safetensors" for i in range(n_models)],
                             directory / "out.safetensors", force=True, **hparams)
    else:
        pre, fts = make_models(n_models)
        hparams = {**hparams, **_statistics(method, pre, n_models)}
        model_mb = sum(t.numel() * t.element_size() for t in pre.values()) / 2**20
        params = sum(t.numel() for t in pre.values())
        _release_freed_memory()
        before = rss_mb()
        cpu_start = time.process_time()
        start = time.perf_counter()
        merged = merge(method, pre, fts, **hparams)
    wall = time.perf_counter() - start
    cpu = time.process_time() - cpu_start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    errors = [t.get("error") for t in merged.info.get("thresholds", [])]
    return {"case": case, "method": method, "n_models": n_models, "mode": "files" if files else "memory",
            "wall_s": wall, "peak_rss_mb": peak, "runtime_rss_mb": runtime,
            "rss_before_merge_mb": before, "model_mb": model_mb,
            "cpu_s": cpu, "params": params, "threshold_errors": errors,
            "load_avg_1min": os.getloadavg()[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="*", default=list(CASES), help="cases to run (names as in the table)")
    parser.add_argument("--n", type=int, default=5, help="number of fine-tuned models")
    parser.add_argument("--mode", choices=("memory", "files"), default="memory")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--files", help=argparse.SUPPRESS)
    parser.add_argument("--json", help="append one JSON line per case to this file")
    parser.add_argument("--write-models", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.write_models:
        write_models(Path(args.write_models), args.n)
        return
    if args.worker:
        print(json.dumps(worker(args.worker, args.n, args.files)))
        return
    print(f"# {platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, N = {args.n}, mode = {args.mode}")
    print("| method | wall time (s) | CPU time (s) | peak RSS (GiB) | peak / model bytes | "
          "before merge (GiB) | merge overhead (GiB) | load avg |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory(prefix="merge_speed_") as tmp:
        extra = []
        if args.mode == "files":
            subprocess.run([sys.executable, __file__, "--write-models", tmp, "--n", str(args.n)], check=True)
            extra = ["--files", tmp]
        for case in args.methods:
            _run_case(case, args, extra)


def _run_case(case: str, args: argparse.Namespace, extra: list[str]) -> None:
    """One case in a fresh process, so its ru_maxrss is its own peak."""
    proc = subprocess.run([sys.executable, __file__, "--worker", case, "--n", str(args.n), *extra],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        last = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"
        print(f"| {case} | failed: {last} | | | | | | |")
        return
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"| {case} | {r['wall_s']:.1f} | {r['cpu_s']:.1f} | {r['peak_rss_mb'] / 1024:.2f} | "
          f"{r['peak_rss_mb'] / r['model_mb']:.2f} | {r['rss_before_merge_mb'] / 1024:.2f} | "
          f"{(r['peak_rss_mb'] - r['rss_before_merge_mb']) / 1024:.2f} | {r['load_avg_1min']:.1f} |", flush=True)
    if args.json:
        with open(args.json, "a") as f:
            f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()
