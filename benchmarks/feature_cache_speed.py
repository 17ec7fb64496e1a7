"""Time per fine-tuning step: full forward on images vs the trainable suffix on cached activations.

MobileNetV2 (the ../shared ImageNet weights when present, else random init: the timing is
the same), trainable last:N, batch = 3 source domains × 24 images at 224 px, AdamW.
Also times building the cache (the frozen prefix forward) per image.

    python benchmarks/feature_cache_speed.py [--steps 5] [--last 2]
"""

from __future__ import annotations

import argparse
import copy
import platform
import time

import torch
from torch.nn import functional as F

from dgmerge.config import BackboneConfig, shared_mobilenetv2_config
from dgmerge.models import load_backbone
from dgmerge.models.classifier import Classifier, set_trainable
from dgmerge.models.heads import LinearHead
from dgmerge.models.stages import Cut, capture, first_trainable_block
from dgmerge.models.entries import TFLITE_MOBILENETV2, shared_dir


def step_time(model: Classifier, inputs: torch.Tensor, labels: torch.Tensor, steps: int) -> float:
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    model.train()
    timings = []
    for _ in range(steps + 1):  # the first step warms up allocators and is not counted
        start = time.perf_counter()
        loss = F.cross_entropy(model(inputs), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        timings.append(time.perf_counter() - start)
    return sum(timings[1:]) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--last", type=int, default=2, help="train the last N blocks (+ head conv)")
    parser.add_argument("--batch", type=int, default=72)
    args = parser.parse_args()

    shared = shared_dir()
    # Without shared/'s weights: the same network (the entry's padding), randomly initialised.
    cfg = shared_mobilenetv2_config() if shared else BackboneConfig(
        kind="timm", name=TFLITE_MOBILENETV2.model, model_kwargs=dict(TFLITE_MOBILENETV2.model_kwargs))
    backbone = load_backbone(cfg)
    model = Classifier(backbone.encoder, LinearHead(backbone.feature_dim, 7))
    trainable = set_trainable(model, backbone, f"last:{args.last}")
    block = first_trainable_block(backbone.encoder, backbone.blocks,
                                  {n.removeprefix("encoder.") for n in trainable})
    cut = Cut(block=block, image_size=backbone.image_size)
    torch.manual_seed(0)
    images = torch.randn(args.batch, 3, backbone.image_size, backbone.image_size)
    labels = torch.randint(0, 7, (args.batch,))

    start = time.perf_counter()
    activations = capture(backbone.encoder.eval(), cut, images)
    prefix_per_image = (time.perf_counter() - start) / args.batch
    cached_model = copy.deepcopy(model)
    cached_model.cut = cut
    full = step_time(model, images, labels, args.steps)
    cached = step_time(cached_model, activations, labels, args.steps)

    print(f"machine: {platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"weights: {'../shared MobileNetV2' if shared else 'random init'}; trainable last:{args.last} "
          f"(cut at {block}, activations {tuple(activations.shape[1:])})")
    print(f"| step on | s/step (batch {args.batch}) | images/s |")
    print("|---|---:|---:|")
    print(f"| images (full forward) | {full:.3f} | {args.batch / full:.1f} |")
    print(f"| cached activations | {cached:.3f} | {args.batch / cached:.1f} |")
    print(f"speed-up: {full / cached:.1f}x; building the cache: {1 / prefix_per_image:.1f} images/s")


if __name__ == "__main__":
    main()
