"""Both gating benchmarks end to end on a tiny setting (tiny_cnn, random activations at its cut)."""

from __future__ import annotations

import torch

from dgmerge.config import BackboneConfig
from dgmerge.evaluation.results import read_results
from dgmerge.gating.bench_dg import run_dg
from dgmerge.gating.bench_multitask import run_multitask
from dgmerge.gating.experts import PoolSettings
from dgmerge.gating.sources import Setting, Task
from dgmerge.models import load_backbone
from dgmerge.models.stages import Cut
from dgmerge.training.feature_cache import ActivationDataset

POOL = PoolSettings(steps=2, batch_size=4, eval_every=1, probe_epochs=1, gate_steps=2, gate_batch=4,
                    gram_batches=1, eval_batch=16)


def _data(name: str, n: int, k: int, shift: float, gen: torch.Generator, tag: str) -> ActivationDataset:
    labels = torch.arange(n) % k
    acts = torch.randn(n, 16, 4, 4, generator=gen) + labels.view(-1, 1, 1, 1) + shift  # separable classes and tasks
    return ActivationDataset(acts, labels, [(f"{name}/{tag}{j}", int(y)) for j, y in enumerate(labels)])


def _setting(names: list[str], n_classes: dict[str, int]) -> Setting:
    cfg = BackboneConfig(kind="tiny_cnn", name="micro", image_size=16)
    backbone = load_backbone(cfg)
    trainable = [n for n, _ in backbone.encoder.named_parameters() if n.startswith(("blocks.2.", "blocks.3."))]
    tasks = {}
    for i, name in enumerate(names):
        gen = torch.Generator().manual_seed(i)
        k = n_classes.get(name, 3)
        tasks[name] = Task(name, [f"{name}{c}" if k != 3 else f"c{c}" for c in range(k)],
                           _data(name, 24, k, 2 * i, gen, "in"), _data(name, 8, k, 2 * i, gen, "out"))
    return Setting(cfg, backbone, Cut("blocks.2", 16), trainable, tasks)


def test_dg_bench_table_rows_and_resume(tmp_path):
    setting = _setting(["a", "b", "c"], {})
    logs: list[str] = []
    table = run_dg(tmp_path, data=tmp_path, weights=tmp_path, cache_dir=tmp_path, seeds=[0], ms=[0, 2],
                   test_domains=["c"], pool=POOL, log=logs.append, setting=setting)
    rows = read_results(tmp_path / "results.jsonl")
    methods = [r["method"] for r in rows]
    assert methods[:3] == ["AvgMean", "RegMean", "Task Arithmetic"]
    assert "Ours + RegMean, m = 2" in methods and methods[-1].startswith("Individual")
    text = table.read_text()
    assert "| Method | Params (M) | FLOPs (G) | c | Avg |" in text
    # m = 0 adds only the gate; m = 2 also stores the second copy of the two gated blocks.
    by = {r["method"]: r for r in rows}
    assert by["Ours + AvgMean, m = 0"]["test_acc"] == by["AvgMean"]["test_acc"]  # one shared head: selection is moot
    assert by["Ours + AvgMean, m = 2"]["params"] > by["Ours + AvgMean, m = 0"]["params"] > by["AvgMean"]["params"]
    assert (tmp_path / "models" / "seed0" / "c" / "gate.safetensors").is_file()
    run_dg(tmp_path, data=tmp_path, weights=tmp_path, cache_dir=tmp_path, seeds=[0], ms=[0, 2],
           test_domains=["c"], pool=POOL, log=logs.append, setting=setting)
    assert len(read_results(tmp_path / "results.jsonl")) == len(rows)  # resumed: nothing rerun
    assert any(line.startswith("[skip]") for line in logs)


def test_multitask_bench_manual_and_auto_heads(tmp_path):
    setting = _setting(["p", "d"], {"d": 5})
    pool = PoolSettings(**{**POOL.__dict__, "max_test": 6})
    table = run_multitask(tmp_path, data=tmp_path, weights=tmp_path, cache_dir=tmp_path, seed=0,
                          combos=[["p", "d"]], ms=[1], pool=pool, log=lambda _: None, setting=setting)
    rows = read_results(tmp_path / "results.jsonl")
    assert {(r["method"], r["head"]) for r in rows} >= {("Individual", "manual"), ("AvgMean", "auto"),
                                                       ("Ours + RegMean, m = 1", "manual")}
    assert {r["task"] for r in rows} == {"p", "d"}
    assert all(0.0 <= r["test_acc"] <= 1.0 for r in rows)
    assert "**2 tasks: p, d**" in table.read_text()
    assert rows[0]["split"]["n_test"] == {"p": 6, "d": 6}
