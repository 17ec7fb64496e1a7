"""Cost of a HAM lockstep step against the work it cannot avoid, and against plain fine-tuning.

Three timings per step, measured in one run on the same model and batches (N_S sources,
`--batch` images each, trainable last:N of MobileNetV2 on cached activations):

- plain:  N_S independent fine-tuning steps (forward/backward/AdamW on each source's batch);
- floor:  what a HAM step must do, composed from plain torch calls — per model, one forward of
          every source batch (SAE's confidences) and one forward/backward/AdamW of its enriched
          batch, with the enrichment sizes HAM itself chose at that step (replayed from its log);
          without SAE the floor is the plain steps;
- ham:    `dgmerge.training.ham.train_ham` itself (SAE + OPA + historical averaging), per step,
          from the difference of two run lengths so set-up, final merge and evaluation drop out.

Target (issue 6): ham / floor ≤ 1.15. `--uncached` also times HAM on images (full forward).

    python benchmarks/train_speed.py [--steps 12] [--last 1] [--batch 24] [--uncached]
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import time

import torch
from torch.nn import functional as F
from torch.utils.data import TensorDataset

from dgmerge.config import BackboneConfig, HamConfig, TrainConfig, shared_mobilenetv2_config
from dgmerge.models import load_backbone
from dgmerge.models.classifier import Classifier, set_trainable
from dgmerge.models.heads import LinearHead
from dgmerge.models.stages import Cut, capture, first_trainable_block
from dgmerge.models.entries import TFLITE_MOBILENETV2, shared_dir
from dgmerge.training.ham import train_ham

SOURCES = ("a", "b", "c")


def build(last: int) -> tuple[Classifier, Cut, int]:
    """θ0 with a linear head on 7 classes, trainable last:N, and its activation cut."""
    # Without shared/'s weights: the same network (the entry's padding), randomly initialised.
    cfg = shared_mobilenetv2_config() if shared_dir() else BackboneConfig(
        kind="timm", name=TFLITE_MOBILENETV2.model, model_kwargs=dict(TFLITE_MOBILENETV2.model_kwargs))
    backbone = load_backbone(cfg)
    torch.manual_seed(0)
    model = Classifier(backbone.encoder, LinearHead(backbone.feature_dim, 7))
    trainable = set_trainable(model, backbone, f"last:{last}")
    block = first_trainable_block(backbone.encoder, backbone.blocks, {n.removeprefix("encoder.") for n in trainable})
    return model, Cut(block=block, image_size=backbone.image_size), backbone.image_size


def source_data(model: Classifier, cut: Cut | None, size: int, n: int) -> dict[str, TensorDataset]:
    """Per source: n random images (or their activations at `cut`) with random labels."""
    data = {}
    for i, name in enumerate(SOURCES):
        gen = torch.Generator().manual_seed(i)
        images = torch.randn(n, 3, size, size, generator=gen) + 0.5 * i  # distinct "domains"
        labels = torch.randint(0, 7, (n,), generator=gen)
        with torch.no_grad():
            x = capture(model.encoder.eval(), cut, images) if cut is not None else images
        data[name] = TensorDataset(x, labels)
    return data


def ham_seconds_per_step(theta0: Classifier, data: dict, train_cfg: TrainConfig, ham_cfg: HamConfig,
                         steps: int) -> tuple[float, list[dict]]:
    """Per-step time of train_ham: (T(steps) − T(1)) / (steps − 1); plus the long run's log."""
    times, history = [], []
    # A discarded first run: thread pools and allocators warm up outside the two timed runs.
    for n in (1, 1, steps):
        cfg = train_cfg.model_copy(update={"steps": n, "eval_every": n + 1})
        start = time.perf_counter()
        result = train_ham(theta0, data, {}, cfg, ham_cfg, seed=0, desc="ham")
        times.append(time.perf_counter() - start)
        history = result.history
    return (times[2] - times[1]) / (steps - 1), history


def plain_seconds_per_step(theta0: Classifier, data: dict, batch: int, steps: int) -> float:
    """N_S independent fine-tuning steps (one per source) per lockstep step."""
    models = [copy.deepcopy(theta0).train() for _ in SOURCES]
    opts = [torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-4) for m in models]
    timings = []
    for step in range(steps + 1):  # step 0 warms up allocators
        start = time.perf_counter()
        for model, opt, name in zip(models, opts, SOURCES):
            x, y = data[name].tensors
            lo = (step * batch) % (len(y) - batch)
            loss = F.cross_entropy(model(x[lo:lo + batch]), y[lo:lo + batch])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        timings.append(time.perf_counter() - start)
    return statistics.fmean(timings[1:])


def floor_seconds_per_step(theta0: Classifier, data: dict, batch: int, history: list[dict]) -> float:
    """The unavoidable work of each logged HAM step, with HAM's own enrichment sizes."""
    models = [copy.deepcopy(theta0).train() for _ in SOURCES]
    opts = [torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-4) for m in models]
    timings = []
    for step, record in enumerate([history[0], *history]):  # the first replay warms up
        lo = (step * batch) % (len(data["a"].tensors[1]) - batch)
        batches = {name: (d.tensors[0][lo:lo + batch], d.tensors[1][lo:lo + batch]) for name, d in data.items()}
        start = time.perf_counter()
        for model, opt, name in zip(models, opts, SOURCES):
            with torch.no_grad():
                model(torch.cat([b[0] for b in batches.values()]))
            borrowed = int(record.get(f"borrowed/{name}", 0))
            foreign_x = torch.cat([b[0] for j, b in batches.items() if j != name])[:borrowed]
            foreign_y = torch.cat([b[1] for j, b in batches.items() if j != name])[:borrowed]
            x = torch.cat([batches[name][0], foreign_x])
            y = torch.cat([batches[name][1], foreign_y])
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        timings.append(time.perf_counter() - start)
    return statistics.fmean(timings[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--last", type=int, default=1, help="train the last N blocks (+ head conv)")
    parser.add_argument("--batch", type=int, default=24, help="images per source per step")
    parser.add_argument("--uncached", action="store_true", help="also time HAM on images (slow)")
    args = parser.parse_args()

    theta0, cut, size = build(args.last)
    n = args.batch * (args.steps + 2)
    cached = copy.deepcopy(theta0)
    cached.cut = cut
    data = source_data(theta0, cut, size, n)
    train_cfg = TrainConfig(steps=args.steps, batch_size=args.batch, lr=1e-4, trainable=f"last:{args.last}")
    print(f"machine: {platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}; "
          f"weights: {'../shared MobileNetV2' if shared_dir() else 'random init'}; trainable last:{args.last} "
          f"on cached activations {tuple(data['a'].tensors[0].shape[1:])}; {len(SOURCES)} sources × batch "
          f"{args.batch}; {args.steps} timed steps")
    print("| HAM config | plain N_S steps (s) | floor (s) | HAM step (s) | HAM / floor | HAM / plain | "
          "mean borrowed per model |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    configs = {
        # No SAE warm-up here, unlike the bench: every timed step pays SAE's scoring forward.
        "bench (SAE margin 0.1, cap 8/domain, OPA λ 0.1, Beta history)":
            HamConfig(sae_rule="margin", sae_margin=0.1, sae_max_borrow=8, sae_warmup_steps=0),
        "paper SAE (plain τ), OPA, Beta history": HamConfig(),
        "no SAE (OPA + history only)": HamConfig(sae=False),
    }
    plain = plain_seconds_per_step(cached, data, args.batch, args.steps)
    for label, ham_cfg in configs.items():
        ham, history = ham_seconds_per_step(cached, data, train_cfg, ham_cfg, args.steps)
        # Without SAE nothing is scored or borrowed: the floor is plain fine-tuning itself.
        floor = floor_seconds_per_step(cached, data, args.batch, history) if ham_cfg.sae else plain
        borrowed = statistics.fmean(r.get(f"borrowed/{s}", 0) for r in history for s in SOURCES)
        print(f"| {label} | {plain:.3f} | {floor:.3f} | {ham:.3f} | {ham / floor:.2f} | {ham / plain:.2f} | "
              f"{borrowed:.1f} |")
    if args.uncached:
        images = source_data(theta0, None, size, args.batch * 4)
        short = max(2, min(3, args.steps))
        uncached, _ = ham_seconds_per_step(theta0, images, train_cfg, configs[next(iter(configs))], short)
        cached_step, _ = ham_seconds_per_step(cached, data, train_cfg, configs[next(iter(configs))], short)
        print(f"HAM step on images (full forward): {uncached:.2f} s; on cached activations: {cached_step:.3f} s; "
              f"speed-up {uncached / cached_step:.1f}x ({short} steps each)")


if __name__ == "__main__":
    main()
