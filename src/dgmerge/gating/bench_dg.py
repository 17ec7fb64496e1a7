"""`dgmerge bench gating-dg`: PACS leave-one-domain-out, gating vs plain merges (Ye et al. Table 6 layout).

Per test domain: a frozen probe head on the pooled source training splits (the project's
protocol), one expert per source domain (last:2 on cached activations, model selection on
the sources' out-splits), a 3-way gate on 15% of each source's training split (the
target never enters it), then every merge on the same experts, scored on the whole test
domain. The experts share the head, so head selection is moot in DG; the gate only mixes.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from dgmerge.evaluation.results import append_result, make_row, read_results
from dgmerge.gating.artifacts import save_gate, save_grams
from dgmerge.gating.evaluate import Pool, score, variants
from dgmerge.gating.experts import (
    PoolSettings,
    expert_grams,
    fit_gate,
    gate_probs,
    pooled,
    probe_head,
    theta0_with,
    train_expert,
    trained_keys,
)
from dgmerge.gating.sources import Setting, load_setting
from dgmerge.pipeline.artifacts import save_model, write_text_atomic
from dgmerge.training.finetune import SELECTION_RULE

Log = Callable[[str], None]


def run_dg(out: Path, *, data: Path, weights: Path, cache_dir: Path, seeds: Sequence[int], ms: Sequence[int],
           test_domains: Sequence[str] | None, pool: PoolSettings, log: Log = print,
           setting: Setting | None = None) -> Path:
    """Run every (seed, test domain) not yet in out/results.jsonl; write out/table.md; return its path.

    `setting` replaces loading PACS (tests pass a tiny one).
    """
    start = time.perf_counter()
    setting = setting or load_setting(weights, cache_dir, pacs=data, digits=False)
    domains = list(setting.tasks)
    chosen = list(test_domains or domains)
    unknown = [d for d in chosen if d not in domains]
    if unknown:
        raise ValueError(f"--test-domain {unknown}: not a domain of {data} ({', '.join(domains)})")
    results = out / "results.jsonl"
    done = {(r["seed"], r["test_domain"]) for r in read_results(results)} if results.exists() else set()
    for seed in seeds:
        for target in chosen:
            if (seed, target) in done:
                log(f"[skip] seed {seed}, {target}: already in {results}")
                continue
            log(f"== seed {seed} · test domain {target}")
            for row in _cell(setting, out, target, seed, ms, pool, log):
                append_result(results, row)
    table = render_dg(read_results(results), domains)
    write_text_atomic(out / "table.md", table)
    log(table)
    log(f"wall time {time.perf_counter() - start:.0f} s")
    return out / "table.md"


def _cell(setting: Setting, out: Path, target: str, seed: int, ms: Sequence[int], pool: PoolSettings,
          log: Log) -> list[dict[str, Any]]:
    sources = [d for d in setting.tasks if d != target]
    tasks = setting.tasks
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    head = probe_head(setting, pooled([tasks[d].train for d in sources]), len(tasks[target].classes), pool, seed)
    val = {d: tasks[d].test for d in sources}  # the sources' out-splits: model selection only
    experts = [train_expert(setting, head, tasks[d].train, val, pool, seed, f"expert {d}") for d in sources]
    t_experts = time.perf_counter() - t0
    grams = [expert_grams(setting, e, tasks[d].train, pool, trained_keys(setting), seed)
             for e, d in zip(experts, sources)]
    gate = fit_gate(setting, [tasks[d].train for d in sources], pool, seed)
    theta0 = theta0_with(setting, head)
    folder = out / "models" / f"seed{seed}" / target
    meta = {"dataset": "PACS", "test_domain": target, "seed": seed, "classes": tasks[target].classes,
            "backbone": setting.backbone_cfg.model_dump(mode="json"), "head": "LinearHead"}
    save_model(folder / "zero_shot.safetensors", theta0, {**meta, "method": "zero_shot"})
    for d, e, g in zip(sources, experts, grams):
        save_model(folder / f"source_{d}.safetensors", e, {**meta, "method": f"source:{d}", "task": d})
        save_grams(folder / f"grams_{d}.safetensors", g, d)
    save_gate(folder / "gate.safetensors", gate, setting.backbone_cfg, sources, pool.gate_fraction)
    test = tasks[target].test
    full = torch.utils.data.ConcatDataset([tasks[target].train, test])  # the whole test domain
    probs = gate_probs(gate, full, pool.eval_batch)
    log(f"   experts {t_experts:.0f} s; gate mean P over the test domain: "
        + ", ".join(f"{d} {p:.2f}" for d, p in zip(sources, probs.mean(dim=0).tolist())))
    merge_pool = Pool(setting, theta0.state_dict(), [e.state_dict() for e in experts], [head] * len(sources),
                      [tasks[target].classes] * len(sources), gate, grams)
    similarities = merge_pool.similarities()
    ids = {"dataset": "PACS", "test_domain": target, "seed": seed, "hparams": dict(pool.__dict__),
           "split": {"holdout_fraction": 0.2, "trial_seed": seed, "split_seed": "seed_hash(trial_seed, domain)",
                     "test_split": "full", "n_test": len(full), "sources": sources},
           "selection": SELECTION_RULE, "benchmark": "gating-dg"}
    rows = []
    for variant in variants(ms):
        t1 = time.perf_counter()
        model = merge_pool.build(variant)
        acc = score(model, full, probs, 0, pool.eval_batch)["manual"]
        cost = merge_pool.cost(model, with_gate=variant.m is not None)
        gated = [m for m in model.mixtures()]
        rows.append(make_row(**ids, method=variant.label, test_acc=acc, wall_time_s=time.perf_counter() - t1,
                             base=variant.base, m=variant.m, params=cost["params"], flops=cost["flops"],
                             gated_modules=len(gated), similarities=similarities))
        log(f"   {variant.label:<28} {100 * acc:5.1f}   params {cost['params'] / 1e6:.2f} M")
    single = [score(_expert_model(merge_pool, e, head), full, probs[:, :1], 0, pool.eval_batch)["manual"]
              for e in experts]
    rows.append(make_row(**ids, method="Individual (mean of the source experts)", test_acc=statistics.fmean(single),
                         wall_time_s=0.0, base=None, m=None, params=None, flops=None,
                         single=dict(zip(sources, single))))
    return rows


def _expert_model(pool: Pool, expert, head):
    """An expert as a one-expert GatedClassifier (so the same scoring path applies)."""
    from dgmerge.gating.combine import build_gated

    return build_gated(pool.setting.backbone.encoder, expert.state_dict(), [], [], pool.gate, [head],
                       [pool.task_classes[0]], cut=pool.setting.cut, inputs="activations").eval()


def render_dg(rows: list[dict[str, Any]], domains: Sequence[str]) -> str:
    """Markdown: methods × (Params, FLOPs, test domains, Avg), mean over seeds (± std when several)."""
    order: list[str] = []
    cells: dict[tuple[str, str], list[float]] = {}
    cost: dict[str, tuple[float, float]] = {}
    for row in rows:
        if row.get("benchmark") != "gating-dg":
            continue
        if row["method"] not in order:
            order.append(row["method"])
        cells.setdefault((row["method"], row["test_domain"]), []).append(100 * row["test_acc"])
        if row.get("params") is not None:
            cost[row["method"]] = (row["params"] / 1e6, row["flops"] / 1e9)
    present = [d for d in domains if any((m, d) in cells for m in order)]
    lines = ["| Method | Params (M) | FLOPs (G) | " + " | ".join(present) + " | Avg |",
             "|---|---:|---:|" + "---:|" * (len(present) + 1)]
    for method in order:
        means = [statistics.fmean(cells[(method, d)]) if (method, d) in cells else float("nan") for d in present]
        params, flops = cost.get(method, (float("nan"), float("nan")))
        text = []
        for d in present:
            values = cells.get((method, d), [])
            cell = f"{statistics.fmean(values):.1f}" if values else "–"
            text.append(cell + (f" ± {statistics.stdev(values):.1f}" if len(values) > 1 else ""))
        avg = f"{statistics.fmean(means):.1f}" if not any(math.isnan(m) for m in means) else "–"
        cost_text = "– | –" if math.isnan(params) else f"{params:.2f} | {flops:.3f}"
        lines.append(f"| {method} | {cost_text} | " + " | ".join(text) + f" | {avg} |")
    return "\n".join(lines) + "\n"
