"""`dgmerge merge --method gating` from files, and reloading its output for `dgmerge evaluate`.

The output is one safetensors file holding the merged encoder (gated modules as N stacked
copies), the gate and every expert's head, with the metadata that rebuilds it: backbone,
cut, gated module names, the tasks' class lists, mode.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from dgmerge.evaluation.saved_models import backbone_of, load_model, register_model_kind
from dgmerge.files import read_state_dict, save_model
from dgmerge.gating.artifacts import gate_skeleton, load_gate, load_grams
from dgmerge.gating.combine import (
    BASES,
    base_merge,
    build_gated,
    candidate_modules,
    candidate_similarities,
    gated_module_names,
    least_similar,
)
from dgmerge.gating.gated_model import MODES, GatedClassifier, install_mixtures
from dgmerge.merging.files import register_file_merge
from dgmerge.merging.validate import MergeError
from dgmerge.models.heads import LinearHead

# The metadata kind of a gated model file; `dgmerge evaluate` loads it through register_model_kind.
GATED_KIND = "gated_classifier"
SETTINGS = {"base": str, "m": int, "gate_norms": bool, "mode": str, "scale": float, "alpha": float}


def parse_gating_settings(pairs: Sequence[str]) -> dict[str, Any]:
    """--set key=value pairs of the gating merge, typed and checked (MergeError names the bad one)."""
    out: dict[str, Any] = {"base": "average", "m": 1, "gate_norms": True, "mode": "sample", "scale": 0.5,
                           "alpha": 0.9}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or key not in SETTINGS:
            raise MergeError(f"gating: --set {pair!r}; settings are {', '.join(f'{k}=…' for k in SETTINGS)}")
        kind = SETTINGS[key]
        try:
            out[key] = value.lower() in ("1", "true", "yes") if kind is bool else kind(value)
        except ValueError:
            raise MergeError(f"gating: --set {pair!r}: {key} must be a {kind.__name__}") from None
    if out["base"] not in BASES:
        raise MergeError(f"gating: base={out['base']!r}; use one of {', '.join(BASES)}")
    if out["mode"] not in MODES:
        raise MergeError(f"gating: mode={out['mode']!r}; use one of {', '.join(MODES)}")
    return out


def merge_gating_files(pretrained: Path, models: Sequence[Path], gate_path: Path, out: Path, *,
                       grams: Sequence[Path] = (), force: bool = False, **settings: Any) -> dict[str, Any]:
    """Write the gating merge of `models` (dgmerge classifier files sharing θ0 = `pretrained`) to `out`.

    The i-th model is the expert of the gate's i-th task. Returns a summary for the CLI.
    """
    out = Path(out)
    if out.exists() and not force:
        raise MergeError(f"{out} exists; pass --force to overwrite it")
    if out.suffix != ".safetensors":
        raise MergeError(f"--out {out}: the gating merge writes safetensors; name it *.safetensors")
    theta0, meta0, _ = load_model(Path(pretrained))
    experts = [load_model(Path(p)) for p in models]
    gate, gate_meta = load_gate(Path(gate_path))
    if len(experts) != len(gate_meta["tasks"]):
        raise MergeError(f"--gate {gate_path} routes between {len(gate_meta['tasks'])} tasks "
                         f"({', '.join(gate_meta['tasks'])}) but {len(experts)} models were given; pass one per task, "
                         "in the gate's order")
    for path, (_, meta, _) in zip(models, experts):
        if meta["backbone"] != meta0["backbone"]:
            raise MergeError(f"{path}: backbone {meta['backbone']['name']} differs from --pretrained's")
    base_state = theta0.state_dict()
    states = [m.state_dict() for m, _, _ in experts]
    # The tensors worth merging are the ones some expert changed (frozen ones equal θ0's in all).
    keys = [k for k, v in base_state.items() if k.startswith("encoder.") and v.is_floating_point()
            and any(not torch.equal(s[k], v) for s in states)]
    if not keys:
        raise MergeError("the models do not differ from --pretrained in any encoder tensor: nothing to merge")
    gram_dicts = [load_grams(Path(g)) for g in grams] if grams else None
    if settings["base"] == "regmean" and (gram_dicts is None or len(gram_dicts) != len(states)):
        raise MergeError("gating with base=regmean needs one --grams file per model (grams_<task>.safetensors)")
    merged = base_merge(settings["base"], base_state, states, keys, grams=gram_dicts, scale=settings["scale"],
                        alpha=settings["alpha"])
    backbone = backbone_of(meta0)
    trained = [k.removeprefix("encoder.") for k in keys]
    candidates = candidate_modules(theta0.encoder, backbone.blocks, backbone.tail, trained)
    similarities = candidate_similarities(states, candidates)
    chosen = least_similar(similarities, settings["m"])
    gated = gated_module_names(theta0.encoder, candidates, chosen, trained, settings["gate_norms"])
    heads = [m.head for m, _, _ in experts]
    classes = [list(meta["classes"]) for _, meta, _ in experts]
    model = build_gated(theta0.encoder, merged, states, gated, gate, heads, classes, cut=gate.cut,
                        mode=settings["mode"], inputs="images")
    meta = {"kind": GATED_KIND, "method": "gating", "backbone": meta0["backbone"], "head": "LinearHead", "classes": model.classes,
            "tasks": [{"name": n, "classes": c} for n, c in zip(gate_meta["tasks"], classes)],
            "gated": gated, "chosen": chosen, "similarities": similarities, "cut": gate_meta["cut"],
            "image_size": gate_meta["image_size"], "feature_dim": gate.linear.in_features, **settings}
    save_model(out, model, meta)
    return {"gated_modules": gated, "chosen": chosen, "tasks": gate_meta["tasks"], "merged_tensors": len(keys)}


def load_gated(path: Path, meta: dict[str, Any]) -> tuple[GatedClassifier, Any]:
    """Rebuild a file written by merge_gating_files (architecture from metadata, weights from the file)."""
    tasks = meta["tasks"]
    backbone = backbone_of(meta)
    encoder = backbone.encoder
    # The experts only give the mixtures their shapes here; the stacked weights come from the file.
    install_mixtures(encoder, [encoder] * len(tasks), meta["gated"])
    gate = gate_skeleton(meta, len(tasks))
    cut = gate.cut
    heads = [LinearHead(int(meta["feature_dim"]), len(t["classes"])) for t in tasks]
    model = GatedClassifier(encoder, gate, heads, [t["classes"] for t in tasks], cut=cut, mode=meta["mode"],
                            inputs="images")
    state = read_state_dict(path)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{path} does not fit its gating metadata: missing {sorted(missing)[:5]}, "
                         f"unexpected {sorted(unexpected)[:5]}")
    return model.eval(), backbone.preprocessing()


register_model_kind(GATED_KIND, load_gated)


def _merge_from_files(pretrained: Path, models: Sequence[Path], out: Path, *, inputs: dict[str, list[Path]],
                      settings: Sequence[str], force: bool) -> dict[str, Any]:
    """`dgmerge merge --method gating`: one --gate file, --grams files for base=regmean."""
    gates = inputs.get("gate") or []
    if len(gates) != 1:
        raise MergeError("--method gating needs one --gate GATE.safetensors (written by a run of the gating "
                         "experiment method, e.g. `dgmerge bench gating-dg`)")
    return merge_gating_files(pretrained, models, gates[0], out, grams=inputs.get("grams") or [], force=force,
                              **parse_gating_settings(settings))


register_file_merge("gating", _merge_from_files, inputs=("gate", "grams"),
                    summary="Ye et al.'s gating merge: the gate, N copies of the m least-similar blocks, every head")
