"""Leave-one-domain-out experiment: θ0 head, ERM, one model per source, and their merge.

For each seed and test domain: build the environments (the test domain is held out of
training and model selection), load θ0, give it a frozen head (CLIP text head, or a linear
probe fitted on the pooled source training splits), then run each requested method and
append one result row per method to results.jsonl.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch.utils.data import ConcatDataset, Dataset

from dgmerge.config import ExperimentConfig, HamConfig, can_reuse
from dgmerge.data.cache import InMemoryDataset
from dgmerge.data.environments import Environments, make_environments
from dgmerge.data.imagefolder import DomainIndex, ImageDataset, scan_domains
from dgmerge.data.transforms import train_transform
from dgmerge.evaluation.accuracy import accuracy
from dgmerge.evaluation.results import append_result, config_hash, make_row, read_results
from dgmerge.merging.scope import merge_subset
from dgmerge.models import load_backbone
from dgmerge.models.backbone import Backbone
from dgmerge.models.classifier import Classifier, set_trainable, trainable_encoder_names, trainable_names
from dgmerge.models.stages import Cut, StageEncoder, first_trainable_block
from dgmerge.models.heads import LinearHead
from dgmerge.pipeline.artifacts import save_history, save_model
from dgmerge.training.feature_cache import ActivationDataset, cache_key, cached_activations
from dgmerge.training.checkpoint import Checkpointer
from dgmerge.training.ham import MERGED_FROM, HamResult, merge_trained, train_ham
from dgmerge.training.finetune import SELECTION_RULE, TrainResult, copy_model, fine_tune
from dgmerge.training.probe import extract_features, fit_linear_probe

Log = Callable[[str], None]


@dataclass
class Cell:
    """Everything one (seed, test domain) run needs, built once and shared by its methods."""

    cfg: ExperimentConfig
    index: DomainIndex
    envs: Environments
    seed: int
    test_domain: str
    backbone: Backbone
    theta0: Classifier
    train_sets: dict[str, Dataset]
    val_sets: dict[str, Dataset]
    test_set: Dataset
    job: str
    # Rows already in results.jsonl for this cell (method names), so reruns skip them.
    done: set[str] = field(default_factory=set)

    @property
    def out_dir(self) -> Path:
        return self.cfg.output_dir / "models" / f"seed{self.seed}" / self.test_domain


def experiment_key(cfg: ExperimentConfig) -> str:
    """Hash of everything that changes a result, except which seeds/domains/methods run."""
    payload = cfg.model_dump(mode="json", exclude={"seeds", "methods", "output_dir", "name", "save_models"})
    # Settings that change speed, not results, stay out of the key.
    for section, name in (("data", "test_domains"), ("data", "num_workers"), ("data", "cache_images"),
                          ("train", "feature_cache"), ("train", "feature_cache_dir"),
                          ("train", "checkpoint_every")):
        payload[section].pop(name, None)
    # Variants are rows of their own, each recording its full HAM config: adding one must not
    # invalidate the rest of the experiment.
    for name in ("ham_variants", "ham_variant_runs"):
        payload.pop(name, None)
    return config_hash(payload)


def run_experiment(cfg: ExperimentConfig, log: Log = print,
                   cells: set[tuple[int, str]] | None = None) -> list[dict[str, Any]]:
    """Run every (seed, test domain) cell of `cfg`, skipping cells already in results.jsonl.

    `cells` restricts the run to those (seed, test domain) pairs: how parallel workers split
    one experiment between them (they append to the same results.jsonl).
    """
    dataset_dir = cfg.data.root / cfg.data.dataset
    index = scan_domains(dataset_dir)
    test_domains = cfg.data.test_domains or list(index.domains)
    unknown = [d for d in test_domains if d not in index.domains]
    if unknown:
        raise ValueError(f"test domains {unknown} are not in {dataset_dir} (domains: {', '.join(index.domains)})")
    if len(index.domains) < 2:
        raise ValueError(f"{dataset_dir} has {len(index.domains)} domain(s); leave-one-out needs at least 2")
    results_path = cfg.output_dir / "results.jsonl"
    key = experiment_key(cfg)
    done = _finished_methods(results_path, key)
    rows: list[dict[str, Any]] = []
    for seed in cfg.seeds:
        for test_domain in test_domains:
            if cells is not None and (seed, test_domain) not in cells:
                continue
            finished = done.get((seed, test_domain), set())
            todo = [m for m in cfg.methods if m not in finished]
            if "ham_variants" in todo and all(f"ham:{v.label}" in finished for v in cfg.ham_variants
                                              if v.applies_to(seed)):
                todo.remove("ham_variants")
            if not todo:
                log(f"[skip] seed {seed}, test domain {test_domain}: already in {results_path}")
                continue
            log(f"== seed {seed} · test domain {test_domain} · methods {', '.join(todo)}")
            cell = build_cell(cfg, index, test_domain, seed, key)
            cell.done = finished
            rows += run_cell(cell, todo, results_path, log)
    return rows


def _finished_methods(results_path: Path, key: str) -> dict[tuple[int, str], set[str]]:
    done: dict[tuple[int, str], set[str]] = {}
    if results_path.exists():
        for row in read_results(results_path):
            if row.get("experiment_key") == key:
                finished = done.setdefault((row["seed"], row["test_domain"]), set())
                finished.add(row["method"])
                # Variants are done one by one (a config may add more); other groups as a whole.
                if row.get("method_group") != "ham_variants":
                    finished.add(row.get("method_group", row["method"]))
    return done


def build_cell(cfg: ExperimentConfig, index: DomainIndex, test_domain: str, seed: int, key: str) -> Cell:
    """Environments, datasets and θ0 (encoder + frozen head) for one seed and test domain."""
    envs = make_environments(index, test_domain, trial_seed=seed, holdout_fraction=cfg.data.holdout_fraction,
                             max_images_per_domain=cfg.data.max_images_per_domain)
    envs.check_no_leak()
    torch.manual_seed(seed)
    backbone = load_backbone(cfg.backbone)
    eval_tf = backbone.preprocessing()
    train_tf = train_transform(backbone.image_size, backbone.mean, backbone.std) if cfg.data.train_augment else eval_tf
    mode = cfg.data.on_bad_image

    def dataset(samples: list, transform: Any) -> Dataset:
        data = ImageDataset(samples, transform, on_bad_image=mode)
        return InMemoryDataset(data) if cfg.data.cache_images and transform is eval_tf else data

    train_sets = {d: dataset(envs.train_in[d], train_tf) for d in envs.sources}
    val_sets = {d: dataset(envs.train_out[d], eval_tf) for d in envs.sources}
    test_set = dataset(envs.test_samples(cfg.data.test_split), eval_tf)
    cut = None
    if cfg.train.feature_cache != "off":
        cut = _cut_for(cfg, backbone)
        # One cache per whole domain, in path order, so every seed, split and test domain
        # reads the same files; splits are row selections of it.
        domains = {d: sorted(envs.train_in[d] + envs.train_out[d], key=lambda s: str(s[0])) for d in envs.sources}
        domains[test_domain] = sorted(envs.test, key=lambda s: str(s[0]))
        cached = {d: _activations(cfg, backbone, cut, ImageDataset(samples, eval_tf, on_bad_image=mode), d)
                  for d, samples in domains.items()}
        train_sets = {d: cached[d].select(envs.train_in[d]) for d in envs.sources}
        val_sets = {d: cached[d].select(envs.train_out[d]) for d in envs.sources}
        test_set = cached[test_domain].select(envs.test_samples(cfg.data.test_split))
    head = _frozen_head(cfg, backbone, index, envs, eval_tf, seed, train_sets, cut)
    theta0 = Classifier(backbone.encoder, head)
    theta0.cut = cut
    return Cell(cfg, index, envs, seed, test_domain, backbone, theta0, train_sets, val_sets, test_set, key)


def _cut_for(cfg: ExperimentConfig, backbone: Backbone) -> Cut:
    if cfg.data.train_augment:
        raise ValueError("train.feature_cache needs data.train_augment: false (augmented images differ every step)")
    trainable = set(trainable_encoder_names(backbone.encoder, backbone, cfg.train.trainable))
    block = first_trainable_block(backbone.encoder, backbone.blocks, trainable)
    if block is None:
        raise ValueError(f"train.feature_cache needs a frozen prefix: trainable={cfg.train.trainable!r} trains "
                         f"parameters before every block of {backbone.name}; use trainable: last:N")
    return Cut(block=block, image_size=backbone.image_size)


def _activations(cfg: ExperimentConfig, backbone: Backbone, cut: Cut, data: ImageDataset,
                 domain: str) -> ActivationDataset:
    cache_dir = None
    if cfg.train.feature_cache == "disk":
        cache_dir = cfg.train.feature_cache_dir or cfg.output_dir / "feature_cache"
    key = cache_key(cfg.backbone.model_dump(mode="json"), cut, data.transform, data.samples,
                    cfg.train.feature_cache_dtype)
    return cached_activations(backbone.encoder, cut, data, key=key, cache_dir=cache_dir,
                              dtype=cfg.train.feature_cache_dtype, batch_size=cfg.train.eval_batch_size,
                              desc=f"caching {domain}")


def _frozen_head(cfg: ExperimentConfig, backbone: Backbone, index: DomainIndex, envs: Environments,
                 eval_tf: Any, seed: int, train_sets: dict[str, Dataset], cut: Cut | None) -> torch.nn.Module:
    if backbone.text_head is not None:
        return backbone.text_head(list(index.classes), list(cfg.backbone.templates))
    # Probe on un-augmented pooled source training splits only: the head must not see the target.
    pooled = ConcatDataset([
        ImageDataset(envs.train_in[d], eval_tf, on_bad_image=cfg.data.on_bad_image) if cfg.data.train_augment
        else train_sets[d] for d in envs.sources])
    encoder = StageEncoder(backbone.encoder, cut) if cut is not None else backbone.encoder
    feats, labels = extract_features(encoder, pooled, cfg.train.eval_batch_size, desc="probe features")
    linear = fit_linear_probe(feats, labels, len(index.classes), cfg.probe, seed)
    head = LinearHead(backbone.feature_dim, len(index.classes))
    head.load_state_dict({f"linear.{k}": v for k, v in linear.state_dict().items()})
    head.requires_grad_(False)
    return head


def run_cell(cell: Cell, methods: list[str], results_path: Path, log: Log) -> list[dict[str, Any]]:
    """Run `methods` on one cell in a sensible order and append their rows."""
    rows: list[dict[str, Any]] = []
    cfg = cell.cfg
    source_states: list[dict[str, torch.Tensor]] = []

    def record(method: str, model: Classifier, start: float, extra: dict[str, Any], group: str | None = None,
               result: TrainResult | None = None) -> None:
        row = _evaluate_and_record(cell, method, model, start, extra, group or method, result)
        append_result(results_path, row)
        rows.append(row)
        log(f"   {method:<28} test acc {100 * row['test_acc']:5.1f}   source val {100 * row['val_acc']:5.1f}")
        # zero_shot is θ0 with its head: the --pretrained of a later `dgmerge merge`.
        if cfg.save_models:
            # "merge:ties" -> merge_ties.safetensors: colons are not portable in file names.
            save_model(cell.out_dir / f"{method.replace(':', '_')}.safetensors", model, _model_meta(cell, method))

    if "zero_shot" in methods:
        start = time.perf_counter()
        record("zero_shot", cell.theta0, start, {"head": type(cell.theta0.head).__name__})
    if "erm" in methods:
        start = time.perf_counter()
        model, result = _train(cell, cell.train_sets, "erm")
        record("erm", model, start, _train_extra(result), result=result)
    if "single_source" in methods or "merge" in methods:
        single_accs = []
        for source in cell.envs.sources:
            start = time.perf_counter()
            model, result = _train(cell, {source: cell.train_sets[source]}, f"source {source}")
            source_states.append({k: v for k, v in model.state_dict().items()})
            if "single_source" in methods:
                record(f"source:{source}", model, start, {**_train_extra(result), "source_domain": source},
                       group="single_source", result=result)
                single_accs.append(rows[-1]["test_acc"])
        if "single_source" in methods:
            row = make_row(**_row_ids(cell, "single_source_mean"), test_acc=statistics.fmean(single_accs),
                           wall_time_s=0.0, val_acc=float("nan"), experiment_key=cell.job,
                           method_group="single_source", note="mean test accuracy of the single-source models")
            append_result(results_path, row)
            rows.append(row)
    if "merge" in methods:
        trained = _trained_keys(cell)
        for spec in cfg.merges:
            start = time.perf_counter()
            merged = copy_model(cell.theta0)
            state = merge_subset(spec.method, cell.theta0.state_dict(), source_states, trained, **spec.hparams)
            merged.load_state_dict(state)
            record(f"merge:{spec.name}", merged, start, {"merged": list(cell.envs.sources), "merge_method": spec.method,
                                                        "merge_hparams": spec.hparams}, group="merge")
    ham_runs: list[tuple[HamConfig, HamResult]] = []
    if "ham" in methods:
        start = time.perf_counter()
        result = _train_ham(cell, cfg.ham, "ham")
        ham_runs.append((cfg.ham, result))
        record("ham", _loaded(cell, result.merged_state), start,
               {"merged_from": result.merged_from, "train_wall_time_s": round(result.wall_time_s, 3)})
    if "ham_variants" in methods:
        for variant in cfg.ham_variants:
            method = f"ham:{variant.label}"
            if method in cell.done or not variant.applies_to(cell.seed):
                continue
            ham_cfg = cfg.variant_config(variant)
            reusable = can_reuse(ham_cfg, cfg.ham)
            if (cfg.ham_variant_runs == "reuse" and not reusable) or (cfg.ham_variant_runs == "train" and reusable):
                continue
            start = time.perf_counter()
            base = next((r for c, r in ham_runs if can_reuse(ham_cfg, c)), None)
            reused = base is not None
            if base is None:
                # Train what serves the most variants: HAM's own config when it covers this one.
                train_cfg, name = (cfg.ham, "ham") if reusable else (ham_cfg, f"ham_{variant.label}")
                base = _train_ham(cell, train_cfg, name)
                ham_runs.append((train_cfg, base))
            merged = merge_trained(base, cell.theta0.state_dict(), ham_cfg)
            record(method, _loaded(cell, merged), start,
                   {"variant": variant.model_dump(mode="json"),
                    "merged_from": MERGED_FROM[ham_cfg.historical], "train_wall_time_s": round(base.wall_time_s, 3),
                    "reused_training": reused},
                   group="ham_variants")
    return rows


def _train_ham(cell: Cell, ham_cfg: HamConfig, name: str) -> HamResult:
    theta = copy_model(cell.theta0)
    set_trainable(theta, cell.backbone, cell.cfg.train.trainable, cell.cfg.train.train_head)
    result = train_ham(theta, cell.train_sets, cell.val_sets, cell.cfg.train, ham_cfg, cell.seed, desc=name,
                       checkpoint=_checkpointer(cell, name))
    save_history(cell.cfg.output_dir / "logs" / f"seed{cell.seed}" / cell.test_domain / f"{name}.csv", result.history)
    return result


def _loaded(cell: Cell, state: dict[str, torch.Tensor]) -> Classifier:
    model = copy_model(cell.theta0)
    model.load_state_dict(state)
    return model


def _train(cell: Cell, train_sets: dict[str, Dataset], desc: str) -> tuple[Classifier, TrainResult]:
    model = copy_model(cell.theta0)
    set_trainable(model, cell.backbone, cell.cfg.train.trainable, cell.cfg.train.train_head)
    name = desc.replace(" ", "_")
    result = fine_tune(model, train_sets, cell.val_sets, cell.cfg.train, cell.seed, desc=desc,
                       checkpoint=_checkpointer(cell, name))
    model.load_state_dict(result.best_state)
    save_history(cell.cfg.output_dir / "logs" / f"seed{cell.seed}" / cell.test_domain / f"{name}.csv", result.history)
    return model, result


def _checkpointer(cell: Cell, name: str) -> Checkpointer:
    """Where this run's resumable state goes; keyed by the experiment so configs never mix."""
    path = cell.cfg.output_dir / "checkpoints" / cell.job / f"seed{cell.seed}" / cell.test_domain / f"{name}.pt"
    return Checkpointer(path, cell.cfg.train.checkpoint_every)


def _trained_keys(cell: Cell) -> list[str]:
    """State-dict keys of the parameters that fine-tuning changes (the tensors worth merging)."""
    return trainable_names(cell.theta0, cell.backbone, cell.cfg.train.trainable, cell.cfg.train.train_head)


def _train_extra(result: TrainResult) -> dict[str, Any]:
    return {"best_step": result.best_step, "train_wall_time_s": round(result.wall_time_s, 3)}


def _row_ids(cell: Cell, method: str) -> dict[str, Any]:
    cfg = cell.cfg
    hparams = {"train": cfg.train.model_dump(mode="json"), "probe": cfg.probe.model_dump(mode="json"),
               **_ham_hparams(cfg, method),
               "backbone": cfg.backbone.model_dump(mode="json"),
               "train_augment": cfg.data.train_augment}
    split = {"holdout_fraction": cfg.data.holdout_fraction, "trial_seed": cell.seed,
             "split_seed": "seed_hash(trial_seed, domain)", "test_split": cfg.data.test_split,
             "max_images_per_domain": cfg.data.max_images_per_domain,
             "sources": list(cell.envs.sources), "n_test": len(cell.test_set)}  # type: ignore[arg-type]
    return {"dataset": cfg.data.dataset, "test_domain": cell.test_domain, "seed": cell.seed, "method": method,
            "hparams": hparams, "split": split, "selection": SELECTION_RULE}


def _ham_hparams(cfg: ExperimentConfig, method: str) -> dict[str, Any]:
    """hparams["ham"] of a HAM row: the experiment's HamConfig, or a variant's full config."""
    if method == "ham":
        return {"ham": cfg.ham.model_dump(mode="json")}
    variant = next((v for v in cfg.ham_variants if method == f"ham:{v.label}"), None)
    return {"ham": cfg.variant_config(variant).model_dump(mode="json")} if variant is not None else {}


def _evaluate_and_record(cell: Cell, method: str, model: Classifier, start: float, extra: dict[str, Any],
                         group: str, result: TrainResult | None) -> dict[str, Any]:
    batch = cell.cfg.train.eval_batch_size
    if result is not None and result.history and "val_acc" in result.history[-1]:
        val_acc = result.best_val_acc
    else:
        val_acc = statistics.fmean(accuracy(model, data, batch, desc=f"val {d}") for d, data in cell.val_sets.items())
    test_acc = accuracy(model, cell.test_set, batch, desc=f"test {cell.test_domain}")
    return make_row(**_row_ids(cell, method), test_acc=test_acc, val_acc=val_acc,
                    wall_time_s=time.perf_counter() - start, experiment_key=cell.job, method_group=group,
                    skipped_images=_skipped(cell), **extra)


def _skipped(cell: Cell) -> int:
    """Unreadable images substituted so far in this cell (on_bad_image: skip); 0 otherwise."""
    datasets = [*cell.train_sets.values(), *cell.val_sets.values(), cell.test_set]
    return len({path for data in datasets for path in getattr(data, "skipped", ())})


def _model_meta(cell: Cell, method: str) -> dict[str, Any]:
    return {"method": method, "dataset": cell.cfg.data.dataset, "test_domain": cell.test_domain,
            "seed": cell.seed, "classes": list(cell.index.classes),
            "backbone": cell.cfg.backbone.model_dump(mode="json"),
            "head": type(cell.theta0.head).__name__}
