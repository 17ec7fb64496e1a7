"""`dgmerge bench multitask`: merging experts with different label spaces (Ye et al. Tables 3–4 layout).

Tasks: each PACS domain as its own 7-way task and scikit-learn's digits as a 10-way task.
Every expert is θ0 (ImageNet MobileNetV2) with its own frozen probe head, last:2 fine-tuned
on its task's 80% in-split; scores are on the 20% out-split. Each combination of tasks
gets its own N-way gate (15% of each task's in-split, task identity only). Every merge is
scored per task with the task's head ("manual") and with the head argmax P(x) picks ("auto").
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from dgmerge.data.splits import seed_hash
from dgmerge.evaluation.results import append_result, make_row, read_results
from dgmerge.gating.artifacts import load_grams, save_gate, save_grams
from dgmerge.gating.combine import build_gated
from dgmerge.gating.evaluate import Pool, score, variants
from dgmerge.gating.experts import (
    PoolSettings,
    expert_grams,
    fit_gate,
    gate_probs,
    probe_head,
    theta0_with,
    train_expert,
    trained_keys,
)
from dgmerge.gating.gate import gate_fraction
from dgmerge.gating.sources import Setting, load_setting
from dgmerge.models.classifier import Classifier
from dgmerge.pipeline.artifacts import save_model, write_text_atomic
from dgmerge.training.feature_cache import ActivationDataset

Log = Callable[[str], None]
SELECTION = "none: the expert's final weights after a fixed number of steps (no validation split is used)"


def run_multitask(out: Path, *, data: Path, weights: Path, cache_dir: Path, seed: int, combos: Sequence[Sequence[str]],
                  ms: Sequence[int], pool: PoolSettings, log: Log = print, setting: Setting | None = None) -> Path:
    """Run every combination not yet in out/results.jsonl; write out/table.md; return its path.

    `setting` replaces loading PACS and the digits (tests pass a tiny one).
    """
    if not combos:
        raise ValueError("no task combinations: list them under `combos:` in the config")
    start = time.perf_counter()
    setting = setting or load_setting(weights, cache_dir, pacs=data, digits=True, seed=seed)
    unknown = sorted({t for c in combos for t in c} - set(setting.tasks))
    if unknown:
        raise ValueError(f"combos name unknown task(s) {unknown}; tasks: {', '.join(setting.tasks)}")
    for combo in combos:
        if len(set(combo)) != len(combo) or len(combo) < 2:
            raise ValueError(f"combo {list(combo)}: give at least two different tasks")
    results = out / "results.jsonl"
    done = {r["combo"] for r in read_results(results)} if results.exists() else set()
    experts: dict[str, tuple[Classifier, dict[str, torch.Tensor]]] = {}
    for combo in combos:
        name = "+".join(combo)
        if name in done:
            log(f"[skip] {name}: already in {results}")
            continue
        log(f"== tasks {name}")
        for task in combo:
            if task not in experts:
                experts[task] = _expert(setting, out, task, seed, pool, log)
        for row in _combo(setting, out, list(combo), experts, seed, ms, pool, log):
            append_result(results, row)
    table = render_multitask(read_results(results))
    write_text_atomic(out / "table.md", table)
    log(table)
    log(f"wall time {time.perf_counter() - start:.0f} s")
    return out / "table.md"


def _expert(setting: Setting, out: Path, task: str, seed: int, pool: PoolSettings,
            log: Log) -> tuple[Classifier, dict[str, torch.Tensor]]:
    """The task's expert and Grams, trained once per output folder (reloaded on resume)."""
    info = setting.tasks[task]
    folder = out / "models" / f"seed{seed}"
    path, gram_path = folder / f"expert_{task}.safetensors", folder / f"grams_{task}.safetensors"
    head = probe_head(setting, info.train, len(info.classes), pool, seed)
    if path.is_file() and gram_path.is_file():
        model = theta0_with(setting, head)
        model.load_state_dict(load_file(str(path)))
        return model.eval(), load_grams(gram_path)
    t0 = time.perf_counter()
    model = train_expert(setting, head, info.train, {}, pool, seed, f"expert {task}")
    grams = expert_grams(setting, model, info.train, pool, trained_keys(setting), seed)
    meta = {"method": f"expert:{task}", "task": task, "classes": info.classes, "seed": seed,
            "backbone": setting.backbone_cfg.model_dump(mode="json"), "head": "LinearHead"}
    save_model(path, model, meta)
    save_grams(gram_path, grams, task)
    if not (folder / "zero_shot.safetensors").exists():
        save_model(folder / "zero_shot.safetensors", theta0_with(setting, head), {**meta, "method": "zero_shot"})
    log(f"   expert {task}: {time.perf_counter() - t0:.0f} s")
    return model, grams


def _combo(setting: Setting, out: Path, combo: list[str], experts: dict[str, tuple[Classifier, Any]], seed: int,
           ms: Sequence[int], pool: PoolSettings, log: Log) -> list[dict[str, Any]]:
    tasks = setting.tasks
    gate = fit_gate(setting, [tasks[t].train for t in combo], pool, seed)
    name = "+".join(combo)
    save_gate(out / "models" / f"seed{seed}" / f"gate_{name}.safetensors", gate, setting.backbone_cfg, combo,
              pool.gate_fraction)
    tests = {t: _capped(tasks[t].test, pool.max_test, seed) for t in combo}
    probs = {t: gate_probs(gate, tests[t], pool.eval_batch) for t in combo}
    log("   gate routes to the right task: " + ", ".join(
        f"{t} {float((probs[t].argmax(dim=1) == i).float().mean()):.3f}" for i, t in enumerate(combo)))
    models = [experts[t][0] for t in combo]
    heads = [copy.deepcopy(m.head) for m in models]
    theta0 = theta0_with(setting, heads[0]).state_dict()
    merge_pool = Pool(setting, theta0, [m.state_dict() for m in models], heads,
                      [tasks[t].classes for t in combo], gate, [experts[t][1] for t in combo])
    ids = {"dataset": "PACS-tasks+digits", "test_domain": name, "seed": seed, "hparams": dict(pool.__dict__),
           "split": {"holdout_fraction": 0.2, "trial_seed": seed, "test_split": "out",
                     "n_test": {t: len(tests[t]) for t in combo}, "max_test": pool.max_test},
           "selection": SELECTION, "benchmark": "multitask", "combo": name, "tasks": combo}
    rows = []
    for i, task in enumerate(combo):  # each expert on its own task: the "Individual" row
        alone = build_gated(setting.backbone.encoder, models[i].state_dict(), [], [], gate, [heads[i]],
                            [tasks[task].classes], cut=setting.cut, inputs="activations").eval()
        acc = score(alone, tests[task], probs[task][:, i:i + 1], 0, pool.eval_batch)["manual"]
        rows.append(make_row(**ids, method="Individual", head="manual", task=task, test_acc=acc, wall_time_s=0.0,
                             params=None, flops=None))
    for variant in variants(ms):
        t1 = time.perf_counter()
        model = merge_pool.build(variant)
        scores = {t: score(model, tests[t], probs[t], i, pool.eval_batch) for i, t in enumerate(combo)}
        for head_mode in ("manual", "auto"):
            with_gate = variant.m is not None or head_mode == "auto"
            cost = merge_pool.cost(model, with_gate=with_gate)
            for t in combo:
                rows.append(make_row(**ids, method=variant.label, head=head_mode, task=t,
                                     test_acc=scores[t][head_mode], routed=scores[t]["routed"],
                                     wall_time_s=time.perf_counter() - t1, base=variant.base, m=variant.m,
                                     params=cost["params"], flops=cost["flops"]))
        log(f"   {variant.label:<28} manual {100 * statistics.fmean(s['manual'] for s in scores.values()):5.1f}"
            f"  auto {100 * statistics.fmean(s['auto'] for s in scores.values()):5.1f}")
    return rows


def _capped(data: ActivationDataset, limit: int | None, seed: int) -> ActivationDataset:
    """`data`, or a seeded random subset of `limit` of its rows (the same for every method)."""
    if limit is None or len(data) <= limit:
        return data
    rows = gate_fraction(list(range(len(data))), limit / len(data), seed_hash("max_test", seed))
    return data.select([data.samples[i] for i in rows[:limit]])


def render_multitask(rows: list[dict[str, Any]]) -> str:
    """One markdown table per combination: method × head rows, Params, FLOPs, each task, Avg."""
    blocks = []
    combos: list[str] = []
    for row in rows:
        if row.get("benchmark") == "multitask" and row["combo"] not in combos:
            combos.append(row["combo"])
    for combo in combos:
        mine = [r for r in rows if r.get("combo") == combo]
        tasks = mine[0]["tasks"]
        lines = [f"**{len(tasks)} tasks: {', '.join(tasks)}**", "",
                 "| Method | Head | Params (M) | FLOPs (G) | " + " | ".join(tasks) + " | Avg |",
                 "|---|---|---:|---:|" + "---:|" * (len(tasks) + 1)]
        keys: list[tuple[str, str]] = []
        for r in mine:
            if (r["method"], r["head"]) not in keys:
                keys.append((r["method"], r["head"]))
        for method, head in keys:
            cells = {r["task"]: r for r in mine if r["method"] == method and r["head"] == head}
            accs = [100 * cells[t]["test_acc"] for t in tasks if t in cells]
            first = next(iter(cells.values()))
            cost = ("– | –" if first.get("params") is None
                    else f"{first['params'] / 1e6:.2f} | {first['flops'] / 1e9:.3f}")
            text = " | ".join(f"{100 * cells[t]['test_acc']:.1f}" if t in cells else "–" for t in tasks)
            avg = f"{statistics.fmean(accs):.1f}" if len(accs) == len(tasks) else "–"
            lines.append(f"| {method} | {head} | {cost} | {text} | {avg} |")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"
