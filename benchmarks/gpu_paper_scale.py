"""The HAM paper's setting on one GPU: CLIP ViT-B/16 steps, memory, the input pipeline, the grid's cost.

A random-init open_clip ViT-B/16 (no download) is fine-tuned whole (trainable: all) under a
frozen linear head, through dgmerge's own loops, on synthetic images held in memory:

- ERM: `fine_tune` on N_S = 3 sources × 24 images per step;
- HAM: `train_ham` on the same sources (SAE + OPA + Beta history), 3 models in lockstep;
- floor: what a HAM step must do, from plain torch calls (per model: a no-grad forward of
  every source batch for SAE's scores, one forward/backward/AdamW of its enriched batch,
  with the enrichment sizes HAM itself chose at that step), as in benchmarks/train_speed.py;
- loader: images/s of the uncached training input pipeline (JPEG decode + DomainBed's
  training augmentation) through BatchStream with DataLoader workers, on JPEGs written here;
- the projected GPU-hours of the paper's grid (five DomainBed datasets, 3 seeds, steps
  {500, 3000, 5000, 10000} × lr {5e-6, 1e-5} × λ {0.1, 0.5, 1.0}; r is merge-time and free),
  from the measured per-step times.

Step times are (T(n) − T(1)) / (n − 1) of two runs, so set-up, the final merge and evaluation
drop out. Each precision prints one JSON line; the last line is the summary.

    python benchmarks/gpu_paper_scale.py                 # a GPU: fp32 and bf16, a few minutes
    python benchmarks/gpu_paper_scale.py --smoke         # CPU, a tiny ViT, under 2 minutes (CI)
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional as F
from torch.utils.data import TensorDataset

from dgmerge.config import BackboneConfig, HamConfig, TrainConfig
from dgmerge.device import autocast, resolve_device
from dgmerge.models import load_backbone
from dgmerge.models.classifier import Classifier, set_trainable
from dgmerge.models.heads import LinearHead
from dgmerge.training.batches import loader_images_per_s
from dgmerge.training.finetune import fine_tune
from dgmerge.training.ham import train_ham

SOURCES = ("a", "b", "c")
CLASSES = 7
# The paper's grid (HAM, implementation details) and DomainBed's five datasets: domains each.
GRID_STEPS = (500, 3000, 5000, 10000)
GRID_LRS = 2
GRID_LAMBDAS = 3
SEEDS = 3
DATASETS = {"PACS": 4, "VLCS": 4, "OfficeHome": 4, "TerraIncognita": 4, "DomainNet": 6}
SMOKE_VIT = "dgmerge-smoke-vit"


def smoke_model_config() -> str:
    """Register a tiny open_clip ViT (32 px, 2 layers) so --smoke runs the same code in seconds."""
    import open_clip

    config = {"embed_dim": 16,
              "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "patch_size": 16, "head_width": 16},
              "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
    with tempfile.TemporaryDirectory(prefix="dgmerge-smoke-vit-") as folder:
        (Path(folder) / f"{SMOKE_VIT}.json").write_text(json.dumps(config))
        open_clip.add_model_config(folder)  # read now: the folder may go
    return SMOKE_VIT


def build_theta0(model_name: str, device: torch.device) -> tuple[Classifier, int]:
    """θ0: the open_clip visual tower (random init) under a frozen linear head, all of φ trainable."""
    backbone = load_backbone(BackboneConfig(kind="open_clip", name=model_name, pretrained=None))
    torch.manual_seed(0)
    model = Classifier(backbone.encoder, LinearHead(backbone.feature_dim, CLASSES))
    set_trainable(model, backbone, "all")
    return model.to(device), backbone.image_size


def synthetic_sources(size: int, n: int) -> dict[str, TensorDataset]:
    """n random images per source, shifted per source so the domains differ, with random labels."""
    data = {}
    for i, name in enumerate(SOURCES):
        gen = torch.Generator().manual_seed(i)
        images = torch.randn(n, 3, size, size, generator=gen) + 0.5 * i
        data[name] = TensorDataset(images, torch.randint(0, CLASSES, (n,), generator=gen))
    return data


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> float:
    """Peak GPU memory since the last reset; on the CPU the process's peak resident set."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**30


def per_step(run, device: torch.device, steps: int) -> tuple[float, Any]:
    """(T(steps) − T(1)) / (steps − 1) of `run(n)`, after a discarded warm-up run; plus the long run's result.

    When load makes the one-step run the slower one (the difference is not positive: a stall
    outweighed the work, as in the few-step smoke run on a busy CPU), T(steps) / steps instead,
    an over-estimate that includes set-up, rather than a negative time."""
    times, result = [], None
    for n in (1, 1, steps):
        sync(device)
        start = time.perf_counter()
        result = run(n)
        sync(device)
        times.append(time.perf_counter() - start)
    difference = (times[2] - times[1]) / (steps - 1)
    return (difference if difference > 0 else times[2] / steps), result


def floor_per_step(theta0: Classifier, data: dict, batch: int, history: list[dict], device: torch.device,
                   precision: str) -> float:
    """The unavoidable work of each logged HAM step, with HAM's own enrichment sizes."""
    models = [copy.deepcopy(theta0).train() for _ in SOURCES]
    opts = [torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-5) for m in models]
    scalers = [torch.amp.GradScaler(device.type, enabled=precision == "fp16") for _ in models]
    timings = []
    n = len(data["a"].tensors[1])
    for step, record in enumerate([history[0], *history]):  # the first replay warms up
        lo = (step * batch) % (n - batch)
        batches = {k: (d.tensors[0][lo:lo + batch].to(device), d.tensors[1][lo:lo + batch].to(device))
                   for k, d in data.items()}
        sync(device)
        start = time.perf_counter()
        for model, opt, scaler, name in zip(models, opts, scalers, SOURCES):
            with torch.no_grad(), autocast(device, precision):
                model(torch.cat([b[0] for b in batches.values()]))
            borrowed = int(record.get(f"borrowed/{name}", 0))
            x = torch.cat([batches[name][0], torch.cat([b[0] for j, b in batches.items() if j != name])[:borrowed]])
            y = torch.cat([batches[name][1], torch.cat([b[1] for j, b in batches.items() if j != name])[:borrowed]])
            with autocast(device, precision):
                logits = model(x)
            loss = F.cross_entropy(logits.float(), y)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        sync(device)
        timings.append(time.perf_counter() - start)
    return statistics.fmean(timings[1:])


def loader_speed(size: int, batch: int, workers: int, images: int) -> float:
    """Images/s of JPEG decode + DomainBed's training augmentation through BatchStream workers."""
    from PIL import Image

    from dgmerge.data.imagefolder import ImageDataset
    from dgmerge.data.transforms import train_transform

    gen = torch.Generator().manual_seed(0)
    with tempfile.TemporaryDirectory(prefix="dgmerge-loader-") as folder:
        samples = []
        for i in range(images):
            # PACS-like files: 227 px JPEGs (the loader resizes and crops them to the model's size).
            pixels = (torch.rand(227, 227, 3, generator=gen) * 255).to(torch.uint8).numpy()
            path = Path(folder) / f"{i}.jpg"
            Image.fromarray(pixels).save(path, quality=90)
            samples.append((path, i % CLASSES))
        data = ImageDataset(samples, train_transform(size, (0.48145466, 0.4578275, 0.40821073),
                                                     (0.26862954, 0.26130258, 0.27577711)))
        return loader_images_per_s(data, batch, workers, batches=max(4, images // batch - 1),
                                   pin_memory=torch.cuda.is_available())


def grid_gpu_hours(erm_s: float, ham_s: float) -> dict[str, float]:
    """GPU-hours of the paper's grid from per-step times measured with N_S = 3 sources.

    A step's cost grows with the number of sources (every source adds a batch, and in HAM a
    model), so a dataset with D domains (N_S = D − 1) costs (D − 1) / 3 × the measured step.
    Per dataset, test domain and seed: HAM trains once per (steps, lr, λ); ERM and the N_S
    single-source models (their batches together ≈ one ERM step) once per (steps, lr).
    Evaluation and the cache-free input pipeline are not counted.
    """
    steps_sum = sum(GRID_STEPS)
    out = {}
    for name, domains in DATASETS.items():
        scale = (domains - 1) / len(SOURCES)
        per_cell = steps_sum * GRID_LRS * (GRID_LAMBDAS * ham_s + 2 * erm_s) * scale
        out[name] = domains * SEEDS * per_cell / 3600
    out["total"] = sum(out.values())
    return out


def measure(precision: str, theta0: Classifier, data: dict, device: torch.device, steps: int,
            batch: int) -> dict[str, Any]:
    """ERM, HAM and floor per-step times, images/s and peak memory in one precision."""
    train_cfg = TrainConfig(steps=steps, batch_size=batch, lr=1e-5, weight_decay=0.1, device=str(device),
                            precision=precision, log_every_s=1e9)
    ham_cfg = HamConfig(sae=True, sae_rule="mean", sae_warmup_steps=0, opa=True, opa_weight=0.5,
                        historical="beta", beta=0.5, merge_method="rhm", merge_hparams={"trim": 0.4})
    images_per_step = batch * len(SOURCES)

    def cfg(n: int) -> TrainConfig:
        return train_cfg.model_copy(update={"steps": n, "eval_every": n + 1})

    reset_peak(device)
    erm_s, _ = per_step(lambda n: fine_tune(copy.deepcopy(theta0), data, {}, cfg(n), seed=0, desc="erm"),
                        device, steps)
    erm_peak = peak_gib(device)
    reset_peak(device)
    ham_s, result = per_step(lambda n: train_ham(theta0, data, {}, cfg(n), ham_cfg, seed=0, desc="ham"),
                             device, steps)
    ham_peak = peak_gib(device)
    floor_s = floor_per_step(theta0, data, batch, result.history, device, precision)
    borrowed = statistics.fmean(sum(r.get(f"borrowed/{s}", 0) for s in SOURCES) for r in result.history)
    return {"device": str(device), "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
            "precision": precision, "sources": len(SOURCES), "batch_per_source": batch, "steps_timed": steps,
            "erm_s_per_step": round(erm_s, 4), "erm_images_per_s": round(images_per_step / erm_s, 1),
            "ham_s_per_step": round(ham_s, 4), "ham_images_per_s": round(images_per_step / ham_s, 1),
            "floor_s_per_step": round(floor_s, 4), "ham_over_floor": round(ham_s / floor_s, 3),
            "ham_borrowed_per_step": round(borrowed, 1),
            "erm_peak_mem_gib": round(erm_peak, 3), "peak_mem_gib": round(ham_peak, 3),
            # Meaningful on a GPU with ViT-B/16 only; --smoke prints it to exercise the code.
            "grid_gpu_hours": {k: round(v, 1) for k, v in grid_gpu_hours(erm_s, ham_s).items()}}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="CPU, a tiny ViT, tiny step counts (CI)")
    parser.add_argument("--device", default=None, help="auto | cpu | cuda | cuda:N (default: auto; cpu with --smoke)")
    parser.add_argument("--precision", action="append", choices=("fp32", "bf16", "fp16"),
                        help="repeat; default fp32 and bf16 (bf16 only with --smoke)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per run (default 12; 3 with --smoke)")
    parser.add_argument("--batch", type=int, default=24, help="images per source per step (paper: 24)")
    parser.add_argument("--loader-workers", type=int, default=None, help="DataLoader workers for the loader test")
    args = parser.parse_args(argv)

    device = resolve_device(args.device or ("cpu" if args.smoke else "auto"))
    precisions = args.precision or (["bf16"] if args.smoke else ["fp32", "bf16"])
    steps = args.steps or (3 if args.smoke else 12)
    batch = 4 if args.smoke and args.batch == 24 else args.batch
    model_name = smoke_model_config() if args.smoke else "ViT-B-16"
    theta0, size = build_theta0(model_name, device)
    data = synthetic_sources(size, batch * (steps + 2))
    workers = args.loader_workers if args.loader_workers is not None else (2 if args.smoke else 8)
    loader = loader_speed(size, batch if args.smoke else 64, workers, 24 if args.smoke else 512)
    lines = []
    for precision in precisions:
        line = measure(precision, theta0, data, device, steps, batch)
        line.update({"model": "ViT-B-16 (random init)" if not args.smoke else f"{model_name} (tiny, smoke)",
                     "loader_images_per_s": round(loader, 1), "loader_workers": workers,
                     "torch": torch.__version__, "machine": platform.machine(), "threads": torch.get_num_threads()})
        lines.append(line)
        print(json.dumps(line), flush=True)
    summary = dict(lines[-1])
    summary["all"] = {line["precision"]: {k: line[k] for k in ("erm_images_per_s", "ham_images_per_s",
                                                                 "ham_over_floor", "peak_mem_gib")} for line in lines}
    print(json.dumps(summary), flush=True)
    return summary


if __name__ == "__main__":
    main()
