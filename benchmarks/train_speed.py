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

A second table puts the trainable suffix's training throughput against the machine's own
(a large fp32 GEMM at 1 and 2 threads), for ways of training the N_S models: (a) today's loop,
one model after the other; (b) the models stacked with torch.func (vmap of functional_call
over [N_S, ...] parameters, one AdamW over the stacked tensors); (c) larger batches; (d) the
cached activations stored in float16 (cast to float32 per batch; compute stays float32); and
(e) a 32 px instead of a 224 px dummy image for the frozen prefix that `run_from` runs per
forward (its output is discarded; the logits are checked to be identical).
GFLOP/s = 3 × the suffix's forward FLOPs per image (torch's FlopCounterMode) × images/s.
Every option and the GEMM are timed in interleaved rounds and the median taken, so load from
other processes falls on all of them alike.

    python benchmarks/train_speed.py [--steps 12] [--last 1] [--batch 24] [--uncached]
    python benchmarks/train_speed.py --throughput-only [--threads 1,2] [--rounds 5]
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import shlex
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Callable

import torch
from torch.func import functional_call, vmap
from torch.nn import functional as F
from torch.utils.data import TensorDataset
from torch.utils.flop_counter import FlopCounterMode

from dgmerge.config import BackboneConfig, HamConfig, TrainConfig, shared_mobilenetv2_config
from dgmerge.machine import cpu_model
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


def machine() -> str:
    """CPU model and core count (the CPU as result rows name it)."""
    return f"{cpu_model()}, {os.cpu_count()} logical CPUs"


def suffix_flops(model: Classifier, sample: torch.Tensor) -> float:
    """Forward FLOPs per image of the trainable suffix (FlopCounterMode).

    From the difference of two batch sizes, so the one dummy image that `run_from` sends
    through the frozen prefix per batch does not count as work. Training FLOPs are taken as
    3 × forward: FlopCounterMode counts a depthwise convolution's backward as a dense one
    (960× too much for blocks.6), so its own backward count is no use here.
    """
    counts = []
    for batch in (8, 16):
        x = sample[:1].expand(batch, *sample.shape[1:]).contiguous()
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(x)
        counts.append(counter.get_total_flops())
    return (counts[1] - counts[0]) / 8


@dataclass
class Option:
    """One way of training the N_S models: `step()` trains each on one batch, returns images."""

    label: str
    batch: int
    step: Callable[[], int]
    weights: Callable[[], list[dict[str, torch.Tensor]]]  # each model's trainable tensors, for checks


class _Batches:
    """Random batches of each source's cached activations, gathered and cast per step."""

    def __init__(self, caches: list[torch.Tensor], labels: list[torch.Tensor], batch: int):
        self.caches, self.labels, self.batch = caches, labels, batch
        self.generator = torch.Generator().manual_seed(0)

    def draw(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.randint(0, len(self.labels[i]), (self.batch,), generator=self.generator)
        x = self.caches[i][idx]
        # (d)'s half-precision cache computes in float32; any other cache keeps its dtype.
        return (x.float() if x.dtype == torch.float16 else x), self.labels[i][idx]


def loop_option(label: str, model: Classifier, batches: _Batches) -> Option:
    """(a) today: the N_S models one after the other, each with its own AdamW."""
    models = [copy.deepcopy(model).train() for _ in batches.caches]
    opts = [torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-4) for m in models]

    def step() -> int:
        for i, (m, opt) in enumerate(zip(models, opts)):
            x, y = batches.draw(i)
            loss = F.cross_entropy(m(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return len(models) * batches.batch

    def weights() -> list[dict[str, torch.Tensor]]:
        return [{name: p.detach() for name, p in m.named_parameters() if p.requires_grad} for m in models]

    return Option(label, batches.batch, step, weights)


def stacked_option(label: str, model: Classifier, batches: _Batches) -> Option:
    """(b) the N_S models stacked: trainable tensors as [N_S, ...], one vmap(functional_call)
    forward, one AdamW over the stacked tensors (AdamW is elementwise: the same update as N_S
    optimizers). Only the trainable tensors are stacked (stack_module_state would stack the
    frozen prefix too); frozen tensors and buffers stay shared, so the prefix's dummy image
    runs once per step, not once per model. In float64 its gradients equal the loop's to 1e-15."""
    model = copy.deepcopy(model).train()
    n = len(batches.caches)
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    stacked = {name: p.detach().expand(n, *p.shape).clone().requires_grad_()
               for name, p in model.named_parameters() if p.requires_grad}
    shared = {name: t.detach() for name, t in model.state_dict().items() if name not in trainable}
    opt = torch.optim.AdamW(list(stacked.values()), lr=1e-4)
    forward = vmap(lambda params, x: functional_call(model, (params, shared), (x,)))

    def step() -> int:
        drawn = [batches.draw(i) for i in range(n)]
        x, y = torch.stack([d[0] for d in drawn]), torch.stack([d[1] for d in drawn])
        logits = forward(stacked, x)
        # Sum of the N_S mean losses: each model's gradient is that of its own mean loss.
        loss = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="sum") / batches.batch
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return n * batches.batch

    def weights() -> list[dict[str, torch.Tensor]]:
        return [{name: t[i].detach() for name, t in stacked.items()} for i in range(n)]

    return Option(label, batches.batch, step, weights)


def matmul_option(size: int) -> Callable[[], float]:
    """One size×size fp32 GEMM; returns its FLOPs."""
    a, b = torch.randn(size, size), torch.randn(size, size)

    def run() -> float:
        torch.mm(a, b)
        return 2.0 * size ** 3

    return run


# (e): run_from sends one dummy image through the frozen prefix per forward and throws the result
# away; at the cut's 224 px that costs about as much as 20 images of the suffix's forward.
DUMMY_PX = 32


def small_dummy(cached: Classifier, sample: torch.Tensor) -> Classifier:
    """`cached` with a DUMMY_PX dummy image for the prefix; checks that its logits are unchanged."""
    assert cached.cut is not None
    small = copy.deepcopy(cached)
    small.cut = Cut(block=cached.cut.block, image_size=DUMMY_PX)
    with torch.no_grad():
        torch.testing.assert_close(small.eval()(sample), copy.deepcopy(cached).eval()(sample), rtol=0, atol=0)
    return small


def throughput_table(cached: Classifier, data: dict, threads: list[int], rounds: int, batch: int) -> None:
    """(a)-(d) against the machine's GEMM throughput (CPU), interleaved rounds, medians."""
    caches32 = [d.tensors[0] for d in data.values()]
    caches16 = [c.half() for c in caches32]
    labels = [d.tensors[1] for d in data.values()]
    forward = suffix_flops(copy.deepcopy(cached).train(), caches32[0])
    small = small_dummy(cached, caches32[0][:4])
    big = [b for b in (64, 128) if b > batch]
    specs: list[tuple[str, Callable, Classifier, list[torch.Tensor], int]] = [
        ("(a) loop, fp32 cache (today)", loop_option, cached, caches32, batch),
        ("(b) stacked (vmap), fp32 cache", stacked_option, cached, caches32, batch),
        *[(f"(c) loop, batch {b}", loop_option, cached, caches32, b) for b in big],
        *[(f"(b+c) stacked (vmap), batch {b}", stacked_option, cached, caches32, b) for b in big[:1]],
        ("(d) loop, fp16 cache", loop_option, cached, caches16, batch),
        *[(f"(c+d) loop, batch {b}, fp16 cache", loop_option, cached, caches16, b) for b in big[-1:]],
        (f"(e) loop, {DUMMY_PX} px dummy image", loop_option, small, caches32, batch),
        (f"(b+e) stacked (vmap), {DUMMY_PX} px dummy image", stacked_option, small, caches32, batch),
        *[(f"(c+e) loop, batch {b}, {DUMMY_PX} px dummy image", loop_option, small, caches32, b) for b in big[:1]],
    ]
    gemm = 2048
    print(f"\ncommand: python {' '.join(shlex.quote(a) for a in sys.argv)}")
    print(f"machine: {machine()}; torch {torch.__version__}; load average before: "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"suffix FLOPs per image (FlopCounterMode): forward {forward / 1e6:.1f} M; GFLOP/s = 3 × forward "
          f"× images/s; "
          f"{len(labels)} models, batch per model as listed; GEMM {gemm}×{gemm} fp32; "
          f"medians of {rounds} interleaved rounds")
    rows = []
    for count in threads:
        torch.set_num_threads(count)
        options = [make(label, model, _Batches(caches, labels, b)) for label, make, model, caches, b in specs]
        mm = matmul_option(gemm)
        for option in options:  # warm-up: allocators, oneDNN primitives
            option.step()
        mm()
        # GEMM first, then each option; each round starts one further along, so no option
        # always runs right after the same neighbour or at the same point of a round.
        jobs: list[tuple[str, Callable[[], float]]] = [("gemm", mm)] + [
            (o.label, lambda o=o: 3.0 * forward * o.step()) for o in options]
        wall: dict[str, list[float]] = {label: [] for label, _ in jobs}
        cpu: dict[str, list[float]] = {label: [] for label, _ in jobs}
        flops: dict[str, float] = {}
        for r in range(rounds):
            for label, job in jobs[r % len(jobs):] + jobs[:r % len(jobs)]:
                start, start_cpu = time.perf_counter(), time.process_time()
                flops[label] = job()
                wall[label].append(time.perf_counter() - start)
                cpu[label].append(time.process_time() - start_cpu)
        peak = flops["gemm"] / statistics.median(wall["gemm"]) / 1e9
        peak_cpu = flops["gemm"] / statistics.median(cpu["gemm"]) / 1e9
        for option in options:
            gflops = flops[option.label] / statistics.median(wall[option.label]) / 1e9
            gflops_cpu = flops[option.label] / statistics.median(cpu[option.label]) / 1e9
            rows.append((option.label, count, option.batch, gflops * 1e9 / (3 * forward), gflops, peak,
                         gflops_cpu, peak_cpu))
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print("\n| option | threads | batch / model | images/s | GFLOP/s | matmul GFLOP/s | % of matmul | "
          "% of matmul, CPU time |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for label, count, b, rate, gflops, peak, gflops_cpu, peak_cpu in rows:
        print(f"| {label} | {count} | {b} | {rate:.0f} | {gflops:.1f} | {peak:.1f} | {100 * gflops / peak:.0f} % | "
              f"{100 * gflops_cpu / peak_cpu:.0f} % |")
    print("(% of matmul: wall-clock GFLOP/s over the GEMM's; CPU time: the same ratio per CPU-second of this "
          "process, which other processes' load does not dilute)")
    for count in threads:
        mine = [r for r in rows if r[1] == count]
        best, today = max(mine, key=lambda r: r[3]), mine[0]
        best_cpu = max(mine, key=lambda r: r[6])
        print(f"{count} thread(s): fastest {best[0]} at {best[3]:.0f} images/s, {best[3] / today[3]:.2f} × today's "
              f"loop; per CPU-second: {best_cpu[0]}, {best_cpu[6] / today[6]:.2f} × today's loop")



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--last", type=int, default=1, help="train the last N blocks (+ head conv)")
    parser.add_argument("--batch", type=int, default=24, help="images per source per step")
    parser.add_argument("--uncached", action="store_true", help="also time HAM on images (slow)")
    parser.add_argument("--throughput-only", action="store_true",
                        help="only the throughput table (loop / stacked / batch / fp16 cache vs GEMM)")
    parser.add_argument("--no-throughput", action="store_true", help="only the HAM-vs-floor table")
    parser.add_argument("--threads", default="1,2", help="thread counts for the throughput table")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds per option")
    args = parser.parse_args()

    theta0, cut, size = build(args.last)
    # Enough cached rows per source for the throughput table's largest batches too.
    n = max(args.batch * (args.steps + 2), 256)
    cached = copy.deepcopy(theta0)
    cached.cut = cut
    data = source_data(theta0, cut, size, n)
    train_cfg = TrainConfig(steps=args.steps, batch_size=args.batch, lr=1e-4, trainable=f"last:{args.last}")
    if args.throughput_only:
        throughput_table(cached, data, [int(t) for t in args.threads.split(",")], args.rounds, args.batch)
        return
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
    if not args.no_throughput:
        throughput_table(cached, data, [int(t) for t in args.threads.split(",")], args.rounds, args.batch)


if __name__ == "__main__":
    main()
