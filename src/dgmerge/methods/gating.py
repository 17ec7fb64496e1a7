"""The gating merge of Ye et al. over the cell's single-source models (Table 6 layout in DG).

The experts are the cell's source models (trained once, shared with `single_source` and
`merge`); RegMean's Gram matrices come from each source's training split, and a
len(sources)-way gate is fine-tuned on ≤ `gating.gate_fraction` of those splits with task
identity only. Rows: the plain merges (AvgMean, Task Arithmetic, RegMean), then
gating + each base for every m, then the mean of the experts, all scored on the test set.
The experts share the head, so head selection is moot in DG: the gate only mixes.
"""

from __future__ import annotations

import statistics
import time

import torch
from torch.utils.data import DataLoader, Subset

from dgmerge.config import ExperimentConfig
from dgmerge.evaluation.results import make_row
from dgmerge.files import save_model
from dgmerge.gating.artifacts import save_gate, save_grams
from dgmerge.gating.combine import build_gated
from dgmerge.gating.evaluate import Pool, Setting, Variant, score, variants
from dgmerge.gating.gate import gate_fraction, gate_probs, new_gate, train_gate
from dgmerge.merging.statistics import collect_gram
from dgmerge.methods.cell import Cell, Row, SourceRun
from dgmerge.methods.registry import register_experiment
from dgmerge.models.classifier import trainable_encoder_names
from dgmerge.models.stages import run_from


def row_name(variant: Variant) -> str:
    """gating:<base> for a plain merge, gating:<base>:m<m> for a gated one."""
    return f"gating:{variant.base}" if variant.m is None else f"gating:{variant.base}:m{variant.m}"


def _done(cfg: ExperimentConfig, seed: int, finished: set[str]) -> bool:
    return "gating" in finished


def _check(cfg: ExperimentConfig) -> None:
    if cfg.train.feature_cache == "off":
        raise ValueError("gating needs train.feature_cache: memory or disk (its experts, Grams and gate read "
                         "activations at the first trainable block)")


@register_experiment("gating", order=60, done=_done, check=_check, any_label_space=True,
                     summary="Ye et al.'s gating merge of the source models: the m least-similar blocks mixed "
                             "per input by a gate, the rest merged (rows gating:<base>[:m<m>])",
                     settings=("gating.ms", "gating.bases", "gating.gate_fraction", "gating.gate_steps",
                               "gating.gram_batches", "gating.scale", "gating.alpha", "gating.mode"))
def run(cell: Cell) -> list[Row]:
    """Train the gate, build every plain and gated merge, score each on the test set."""
    g = cell.cfg.gating
    cut = cell.theta0.cut
    assert cut is not None, "checked by _check before any work"
    runs = cell.source_runs()
    trainable = trainable_encoder_names(cell.backbone.encoder, cell.backbone, cell.cfg.train.trainable)
    keys = [f"encoder.{n}" for n in trainable]
    cell.guard({r.source: cell.train_sets[r.source] for r in runs}, "RegMean's Gram statistics and the gate")
    grams = [_grams(cell, r.model, cell.train_sets[r.source], keys) for r in runs]
    gate = new_gate(cell.backbone.encoder, cell.backbone.feature_dim, len(runs), cut, trainable, cell.seed)
    subsets = [Subset(cell.train_sets[r.source], gate_fraction(list(range(len(cell.train_sets[r.source]))),
                                                                g.gate_fraction, cell.seed)) for r in runs]
    train_gate(gate, subsets, steps=g.gate_steps, batch_size=g.gate_batch, lr=g.gate_lr, seed=cell.seed)
    batch = cell.cfg.train.eval_batch_size
    test_sets = cell.test_sets or {cell.test_domain: cell.test_set}
    probs = {name: gate_probs(gate, data, batch) for name, data in test_sets.items()}
    sources = [r.source for r in runs]
    if cell.cfg.save_models:
        _save_inputs(cell, runs, grams, gate)
    _log_routing(cell, sources, probs)
    setting = Setting(cell.backbone, cut, trainable)
    heads = [cell.theta0_for(s).head for s in sources]
    pool = Pool(setting, cell.theta0.state_dict(), [r.model.state_dict() for r in runs], heads,
                [cell.classes(s) for s in sources], gate, grams, scale=g.scale, alpha=g.alpha)
    similarities = pool.similarities()
    hparams = {"gating": g.model_dump(mode="json")}
    rows: list[Row] = []

    def add(method: str, acc: float, **extra: object) -> None:
        row = make_row(**cell.row_ids(method, hparams), test_acc=acc, val_acc=float("nan"),
                       experiment_key=cell.job, method_group="gating", **extra)
        cell.append(row)
        rows.append(row)

    for variant in variants(g.ms, g.bases):
        t0 = time.perf_counter()
        model = pool.build(variant, gate_norms=g.gate_norms, mode=g.mode)
        ids = {"label": variant.label, "base": variant.base, "m": variant.m, "gated_modules": len(model.mixtures()),
               "similarities": similarities}
        if cell.shared_head:
            acc = score(model, cell.test_set, probs[cell.test_domain], 0, batch)["manual"]
            cost = pool.cost(model, with_gate=variant.m is not None)
            add(row_name(variant), acc, wall_time_s=time.perf_counter() - t0, params=cost["params"],
                flops=cost["flops"], **ids)
            cell.log(f"   {variant.label:<28} {100 * acc:5.1f}   params {cost['params'] / 1e6:.2f} M")
            continue
        scores = {t: score(model, test_sets[t], probs[t], i, batch) for i, t in enumerate(sources)}
        for head in ("manual", "auto"):
            # Automatic head selection needs the gate even when no module is gated.
            cost = pool.cost(model, with_gate=variant.m is not None or head == "auto")
            for t in sources:
                add(row_name(variant), scores[t][head], wall_time_s=time.perf_counter() - t0, head=head, task=t,
                    routed=scores[t]["routed"], params=cost["params"], flops=cost["flops"], **ids)
        cell.log(f"   {variant.label:<28} manual {100 * statistics.fmean(s['manual'] for s in scores.values()):5.1f}"
                 f"  auto {100 * statistics.fmean(s['auto'] for s in scores.values()):5.1f}")
    # Each expert alone (on its own task's test set in a multi-task cell).
    single = {}
    for i, (r, head) in enumerate(zip(runs, heads)):
        alone = build_gated(cell.backbone.encoder, r.model.state_dict(), [], [], gate, [head], [cell.classes(r.source)],
                            cut=cut, inputs="activations").eval()
        name = cell.test_domain if cell.shared_head else r.source
        single[r.source] = score(alone, test_sets[name], probs[name][:, i:i + 1], 0, batch)["manual"]
    label = "Individual (mean of the source experts)" if cell.shared_head else "Individual"
    if cell.shared_head:
        add("gating:individual", statistics.fmean(single.values()), wall_time_s=0.0, label=label, base=None, m=None,
            params=None, flops=None, single=single)
    else:
        for t, acc in single.items():
            add("gating:individual", acc, wall_time_s=0.0, label=label, head="manual", task=t, base=None, m=None,
                params=None, flops=None)
    return rows


def _log_routing(cell: Cell, sources: list[str], probs: dict[str, torch.Tensor]) -> None:
    if cell.shared_head:
        mean = probs[cell.test_domain].mean(dim=0).tolist()
        cell.log("   gate mean P over the test domain: " + ", ".join(f"{d} {p:.2f}" for d, p in zip(sources, mean)))
    else:
        cell.log("   gate routes to the right task: " + ", ".join(
            f"{t} {float((probs[t].argmax(dim=1) == i).float().mean()):.3f}" for i, t in enumerate(sources)))


def _save_inputs(cell: Cell, runs: list[SourceRun], grams: list[dict], gate: torch.nn.Module) -> None:
    """What `dgmerge merge --method gating` reads: θ0, the experts, their Grams and the gate."""
    folder = cell.out_dir
    save_model(folder / f"{cell.head_row_name()}.safetensors", cell.theta0, cell.model_meta(cell.head_row_name()))
    for run_, gram in zip(runs, grams):
        task = None if cell.shared_head else run_.source
        save_model(folder / f"source_{run_.source}.safetensors", run_.model,
                   cell.model_meta(f"source:{run_.source}", task))
        save_grams(folder / f"grams_{run_.source}.safetensors", gram, run_.source)
    save_gate(folder / "gate.safetensors", gate, cell.cfg.backbone, [r.source for r in runs],
              cell.cfg.gating.gate_fraction)


def _grams(cell: Cell, model: torch.nn.Module, data: torch.utils.data.Dataset, keys: list[str]) -> dict:
    """RegMean's Gram matrices of `model`'s trained 1×1 convs and linears on its source's training split."""
    loader = DataLoader(data, batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(cell.seed))
    encoder = model.encoder
    cut = cell.theta0.cut
    return collect_gram(encoder, loader, prefix="encoder.", conv1x1=True, keys=keys,
                        max_batches=cell.cfg.gating.gram_batches, forward=lambda x: run_from(encoder, cut, x))
