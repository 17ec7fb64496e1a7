"""Settings of the gating benchmarks from YAML (shipped: configs/gating_pacs_dg.yaml, multitask_pacs_digits.yaml)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path

import yaml

from dgmerge.gating.experts import PoolSettings

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@dataclass
class BenchConfig:
    """Seeds, the m values, merge combinations (multitask) and the shared training settings."""

    seeds: list[int] = field(default_factory=lambda: [0])
    ms: list[int] = field(default_factory=lambda: [0, 1, 3, 5])
    combos: list[list[str]] = field(default_factory=list)
    pool: PoolSettings = field(default_factory=PoolSettings)


def load_bench_config(path: Path | None, *, default: str = "gating_pacs_dg", steps: int | None = None) -> BenchConfig:
    """Read and check a benchmark YAML; unknown keys fail with their name and the file."""
    path = Path(path) if path is not None else CONFIGS / f"{default}.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"--config {path}: no such file")
    raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    known = {"seeds", "ms", "combos", "train"}
    extra = set(raw) - known
    if extra:
        raise ValueError(f"{path}: unknown key(s) {sorted(extra)}; allowed: {sorted(known)}")
    train = raw.get("train") or {}
    names = {f.name for f in fields(PoolSettings)}
    bad = set(train) - names
    if bad:
        raise ValueError(f"{path}: unknown train setting(s) {sorted(bad)}; allowed: {sorted(names)}")
    pool = PoolSettings(**train)
    if steps is not None:
        pool.steps = steps
    if not 0 < pool.gate_fraction <= 0.15:
        raise ValueError(f"{path}: train.gate_fraction={pool.gate_fraction}; Ye et al. use at most 0.15")
    ms = [int(m) for m in raw.get("ms", [0, 1, 3, 5])]
    if any(m < 0 or m > 5 for m in ms):
        raise ValueError(f"{path}: ms={ms}; MobileNetV2 with last:2 has 5 candidate modules, so 0 ≤ m ≤ 5")
    combos = [list(c) for c in raw.get("combos", [])]
    return BenchConfig(seeds=[int(s) for s in raw.get("seeds", [0])], ms=ms, combos=combos, pool=pool)
