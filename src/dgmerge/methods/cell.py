"""The shared cell: everything one (seed, test domain) run offers its experiment methods.

A cell holds the splits, θ0 with its frozen head, the (cached) datasets, and the services
every method uses the same way: training from θ0 with resumable checkpoints, scoring a
model and appending its row, saving it. What one method trains and another reuses (the
single-source models for the merges and the gating merge, HAM's training for its variants)
is trained once per cell, on first request.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch.utils.data import Dataset

from dgmerge.config import ExperimentConfig, HamConfig, TrainConfig, can_reuse, ham_train
from dgmerge.data.environments import Environments
from dgmerge.data.imagefolder import DomainIndex
from dgmerge.data.leak_guard import refuse_test_samples
from dgmerge.evaluation.results import append_result, make_row
from dgmerge.files import save_model
from dgmerge.models.accuracy import accuracy
from dgmerge.models.backbone import Backbone
from dgmerge.models.classifier import Classifier, set_trainable, trainable_names
from dgmerge.training.checkpoint import Checkpointer
from dgmerge.training.finetune import SELECTION_RULE, TrainResult, copy_model, fine_tune
from dgmerge.training.finished import read_finished, save_finished
from dgmerge.training.ham import HamResult, train_ham
from dgmerge.training.history import save_history
from dgmerge.training.observers import MovingAverage, TrajectoryObserver
from dgmerge.training.swad import LossValley, SwadObserver

Log = Callable[[str], None]
Row = dict[str, Any]
# File-name suffix of a finished HAM training kept beside the cell's checkpoints.
KEPT_HAM = ".ham-finished"


@dataclass
class SourceRun:
    """One source domain's model fine-tuned from θ0 (the single-source baseline and merge input)."""

    source: str
    model: Classifier
    result: TrainResult
    wall_time_s: float


@dataclass
class ErmRun:
    """ERM on the pooled sources, trained once per cell, with the averages that rode on its trajectory."""

    model: Classifier
    result: TrainResult
    wall_time_s: float
    # The observers attached to the run, by name ("ma", "swad"): see Cell.erm_observers.
    observers: dict[str, TrajectoryObserver] = field(default_factory=dict)


@dataclass
class Cell:
    """One (seed, test domain) of an experiment, built once and shared by its methods.

    In a multi-task experiment (`tasks:`) a cell is one combination of tasks instead:
    `test_domain` names the combination, every source (task) has its own head, classes and
    test set (its out-split), and there are no validation sets (experts keep their final
    weights, since nothing is held out to choose them on).
    """

    cfg: ExperimentConfig
    index: DomainIndex
    envs: Environments | None
    seed: int
    test_domain: str
    backbone: Backbone
    theta0: Classifier
    train_sets: dict[str, Dataset]
    val_sets: dict[str, Dataset]
    test_set: Dataset
    job: str
    # Absolute paths of every test-domain image: refused wherever data trains, fits or selects.
    test_paths: frozenset[str] = frozenset()
    # The samples the probe head was fitted on, per source, and their absolute paths (both empty
    # with a CLIP text head).
    probe_sets: dict[str, Dataset] = field(default_factory=dict)
    probe_paths: frozenset[str] = frozenset()
    # Multi-task cells: each source's own head, classes and test set (empty in DG cells).
    heads: dict[str, torch.nn.Module] = field(default_factory=dict)
    task_classes: dict[str, list[str]] = field(default_factory=dict)
    test_sets: dict[str, Dataset] = field(default_factory=dict)
    results_path: Path | None = None
    log: Log = print
    # Method names (and groups) already in results.jsonl for this cell, so reruns skip them.
    done: set[str] = field(default_factory=set)
    rows: list[Row] = field(default_factory=list)
    _sources: list[SourceRun] | None = None
    _erm: ErmRun | None = None
    # (HAM config, its training) pairs trained in this cell, for variants that reuse them.
    ham_runs: list[tuple[HamConfig, HamResult]] = field(default_factory=list)
    # Finished trainings kept on disk for reuse after a restart, deleted by `release`.
    kept: list[Path] = field(default_factory=list)

    @property
    def sources(self) -> list[str]:
        """The source domains (or tasks) of this cell, in order."""
        return list(self.train_sets)

    @property
    def shared_head(self) -> bool:
        """Whether every source shares θ0's head and label space (DG), or has its own (tasks)."""
        return not self.heads

    @property
    def out_dir(self) -> Path:
        """Where this cell's models go: <output_dir>/models/seed<seed>/<test domain>."""
        return self.cfg.output_dir / "models" / f"seed{self.seed}" / self.test_domain

    @property
    def logs_dir(self) -> Path:
        """Where this cell's training histories go."""
        return self.cfg.output_dir / "logs" / f"seed{self.seed}" / self.test_domain

    # --- training -------------------------------------------------------------------------

    def fine_tune(self, train_sets: dict[str, Dataset], desc: str, source: str | None = None, *,
                  train: TrainConfig | None = None, seed: int | None = None,
                  observers: Sequence[TrajectoryObserver] = ()) -> tuple[Classifier, TrainResult]:
        """θ0 (with `source`'s head) fine-tuned on `train_sets`, one batch per set per step.

        Returns the best state on the validation sets, or the final one when there are none.
        `train` and `seed` replace the config's and the cell's (DiWA's runs); `observers` watch
        the trajectory (moving averages, SWAD).
        """
        self.guard(train_sets, "training")
        self.guard(self.val_sets, "model selection")
        model = self.trainable_copy(source)
        name = desc.replace(" ", "_")
        result = fine_tune(model, train_sets, self.val_sets, train or self.cfg.train,
                           self.seed if seed is None else seed, desc=self.desc(desc),
                           checkpoint=self.checkpointer(name), num_workers=self.cfg.data.num_workers,
                           log_dir=self.tensorboard_dir(name), observers=observers)
        model.load_state_dict(result.best_state)
        save_history(self.logs_dir / f"{name}.csv", result.history)
        return model, result

    def source_runs(self) -> list[SourceRun]:
        """One model per source domain, trained on first request and shared by every method."""
        if self._sources is None:
            runs = []
            for source in self.sources:
                start = time.perf_counter()
                model, result = self.fine_tune({source: self.train_sets[source]}, f"source {source}", source)
                runs.append(SourceRun(source, model, result, time.perf_counter() - start))
            self._sources = runs
        return self._sources

    def erm_run(self) -> ErmRun:
        """ERM on the pooled sources, trained on first request and shared by erm, erm_ma and swad."""
        if self._erm is None:
            start = time.perf_counter()
            observers = self.erm_observers()
            model, result = self.fine_tune(self.train_sets, "erm", observers=observers)
            self._erm = ErmRun(model, result, time.perf_counter() - start, {o.name: o for o in observers})
        return self._erm

    def erm_observers(self) -> list[TrajectoryObserver]:
        """The averages to ride on ERM's run: MA and SWAD, for each the config lists and has not finished."""
        cfg = self.cfg
        wanted = {m for m in ("erm_ma", "swad") if m in cfg.methods and m not in self.done}
        # "cpu" keeps the averages off a small GPU, as for HAM's histories.
        device = "cpu" if cfg.train.history_device == "cpu" else None
        observers: list[TrajectoryObserver] = []
        if "erm_ma" in wanted:
            observers.append(MovingAverage(cfg.ma.start_step, device))
        if "swad" in wanted:
            valley = LossValley(cfg.swad.n_converge, cfg.swad.n_tolerance, cfg.swad.tolerance_ratio, device)
            observers.append(SwadObserver(valley, cfg.swad.eval_every or cfg.train.eval_every))
        return observers

    def train_ham(self, ham_cfg: HamConfig, name: str) -> HamResult:
        """HAM's lockstep training of one model per source under `ham_cfg` (resumable).

        A finished training stays on disk beside the checkpoints until the cell's methods are
        all done (`release`), so a run stopped before the variants that reuse it resumes
        without training it again. A training this cell already has whose models `ham_cfg` can
        merge (`reusable_ham`) is returned as it is."""
        reusable = self.reusable_ham(ham_cfg)
        if reusable is not None:
            return reusable
        self.guard(self.train_sets, "HAM's training")
        self.guard(self.val_sets, "HAM's model selection")
        result = train_ham(self.trainable_copy(), self.train_sets, self.val_sets, ham_train(self.cfg.train, ham_cfg),
                           ham_cfg, self.seed, desc=self.desc(name), checkpoint=self.checkpointer(name),
                           num_workers=self.cfg.data.num_workers, log_dir=self.tensorboard_dir(name))
        save_history(self.logs_dir / f"{name}.csv", result.history)
        if self.cfg.train.checkpoint_every:
            path = self.checkpoint_dir / f"{name}{KEPT_HAM}.pt"
            save_finished(path, result, self._ham_key(ham_cfg))
            self.kept.append(path)
        self.ham_runs.append((ham_cfg, result))
        return result

    def reusable_ham(self, ham_cfg: HamConfig) -> HamResult | None:
        """A training of this cell whose models `ham_cfg` can merge: one this process trained,
        else one an earlier process finished and kept (None if neither: checkpoints off, not
        that far, or other settings)."""
        known = next((result for trained, result in self.ham_runs if can_reuse(ham_cfg, trained)), None)
        if known is not None or not self.cfg.train.checkpoint_every or not self.checkpoint_dir.is_dir():
            return known
        wanted = self._ham_key(ham_cfg)
        for path in sorted(self.checkpoint_dir.glob(f"*{KEPT_HAM}.pt")):
            if path in self.kept:  # already among ham_runs
                continue
            key, result = read_finished(path)
            trained = HamConfig.model_validate(key["ham"])
            if (key["seed"], key["train"]) == (wanted["seed"], wanted["train"]) and can_reuse(ham_cfg, trained):
                self.log(f"   HAM's training kept in {path} (finished before a restart)")
                self.kept.append(path)
                self.ham_runs.append((trained, result))
                return result
        return None

    def _ham_key(self, ham_cfg: HamConfig) -> dict[str, Any]:
        return {"ham": ham_cfg.model_dump(mode="json"),
                "train": ham_train(self.cfg.train, ham_cfg).model_dump(mode="json"), "seed": self.seed}

    def release(self) -> None:
        """Delete the finished trainings kept for this cell: every method has written its rows."""
        for path in self.kept:
            path.unlink(missing_ok=True)
        self.kept.clear()

    def desc(self, name: str) -> str:
        """A training run's name in progress lines: which cell it belongs to, and what it trains."""
        return f"seed {self.seed} / {self.test_domain} / {name}"

    def tensorboard_dir(self, name: str) -> Path:
        """Where run `name` writes TensorBoard scalars (when tensorboard is installed)."""
        return self.cfg.output_dir / "tensorboard" / f"seed{self.seed}" / self.test_domain / name.replace(" ", "_")

    def guard(self, datasets: dict[str, Dataset], purpose: str) -> None:
        """Refuse (DataLeakError) if any of `datasets` serves a test-domain image; `purpose` names the use."""
        refuse_test_samples(datasets, self.test_paths, purpose)

    def theta0_for(self, source: str | None) -> Classifier:
        """θ0 under `source`'s head (θ0 itself in a DG cell, or when `source` is None)."""
        if source is None or source not in self.heads:
            return self.theta0
        model = Classifier(self.theta0.encoder, self.heads[source])
        model.cut = self.theta0.cut
        return model

    def trainable_copy(self, source: str | None = None) -> Classifier:
        """A copy of θ0 (with `source`'s head) with `train.trainable` (and `train.train_head`) on."""
        model = copy_model(self.theta0_for(source))
        set_trainable(model, self.backbone, self.cfg.train.trainable, self.cfg.train.train_head)
        return model

    def loaded(self, state: dict[str, torch.Tensor]) -> Classifier:
        """A copy of θ0 holding `state`."""
        model = copy_model(self.theta0)
        model.load_state_dict(state)
        return model

    def trained_keys(self) -> list[str]:
        """State-dict keys of the parameters fine-tuning changes (the tensors worth merging)."""
        return trainable_names(self.theta0, self.backbone, self.cfg.train.trainable, self.cfg.train.train_head)

    def checkpointer(self, name: str) -> Checkpointer:
        """Where run `name`'s resumable state goes; keyed by the experiment so configs never mix."""
        return Checkpointer(self.checkpoint_dir / f"{name}.pt", self.cfg.train.checkpoint_every)

    @property
    def checkpoint_dir(self) -> Path:
        """This cell's checkpoints (and finished runs kept for reuse)."""
        return self.cfg.output_dir / "checkpoints" / self.job / f"seed{self.seed}" / self.test_domain

    # --- rows -----------------------------------------------------------------------------

    def record(self, method: str, model: Classifier, start: float, extra: dict[str, Any], *,
               group: str | None = None, result: TrainResult | None = None,
               hparams: dict[str, Any] | None = None, task: str | None = None) -> Row:
        """Score `model` on source validation and the test domain (or `task`'s test set), append its row, save it."""
        batch, precision = self.cfg.train.eval_batch_size, self.cfg.train.precision
        if result is not None and result.history and "val_acc" in result.history[-1]:
            val_acc = result.best_val_acc
        elif self.val_sets:
            val_acc = statistics.fmean(accuracy(model, data, batch, desc=f"val {d}", precision=precision)
                                       for d, data in self.val_sets.items())
        else:
            val_acc = float("nan")
        test_set = self.test_sets[task] if task is not None else self.test_set
        test_acc = accuracy(model, test_set, batch, desc=f"test {task or self.test_domain}", precision=precision)
        if task is not None:
            extra = {**extra, "task": task}
        row = make_row(**self.row_ids(method, hparams), test_acc=test_acc, val_acc=val_acc,
                       update_norm=self.update_norm(model),
                       wall_time_s=time.perf_counter() - start, experiment_key=self.job,
                       method_group=group or method, skipped_images=self.skipped_images(), **extra)
        self.append(row)
        self.log(f"   {method:<28} test acc {100 * row['test_acc']:5.1f}   source val {100 * row['val_acc']:5.1f}")
        if self.cfg.save_models:
            # "merge:ties" -> merge_ties.safetensors: colons are not portable in file names.
            save_model(self.out_dir / f"{method.replace(':', '_')}.safetensors", model, self.model_meta(method, task))
        return row

    def update_norm(self, model: Classifier) -> float | None:
        """‖θ − θ0‖₂ over the trained tensors: how far a method moved from θ0.

        Averaging and trimming shorten updates; an under-trained comparison shows up here. None
        when the model holds none of θ0's trained tensors (a gated model, another task's head).
        """
        theta0, state = self.theta0.state_dict(), model.state_dict()
        keys = [k for k in self.trained_keys() if k in state and state[k].shape == theta0[k].shape]
        if not keys:
            return None
        return sum(float((state[k].double() - theta0[k].double()).pow(2).sum()) for k in keys) ** 0.5

    def append(self, row: Row) -> None:
        """Append a finished row to results.jsonl (when the cell has one) and to this cell's rows."""
        if self.results_path is not None:
            append_result(self.results_path, row)
        self.rows.append(row)

    def row_ids(self, method: str, hparams: dict[str, Any] | None = None) -> dict[str, Any]:
        """The fields every row of this cell carries: dataset, domain, seed, method, settings, split."""
        cfg = self.cfg
        settings = {"train": cfg.train.model_dump(mode="json"), "probe": cfg.probe.model_dump(mode="json"),
                    **(hparams or {}), "backbone": cfg.backbone.model_dump(mode="json"),
                    "train_augment": cfg.data.train_augment}
        split = {"holdout_fraction": cfg.data.holdout_fraction, "trial_seed": self.seed,
                 "split_seed": "seed_hash(trial_seed, domain)", "test_split": cfg.data.test_split,
                 "max_images_per_domain": cfg.data.max_images_per_domain,
                 "sources": self.sources, "n_test": len(self.test_set)}  # type: ignore[arg-type]
        if self.test_sets:
            split.update(test_split="out", max_test=cfg.tasks.max_test if cfg.tasks else None,
                         n_test={t: len(d) for t, d in self.test_sets.items()})  # type: ignore[arg-type]
        return {"dataset": cfg.data.dataset, "test_domain": self.test_domain, "seed": self.seed, "method": method,
                "hparams": settings, "split": split, "selection": SELECTION_RULE}

    def skipped_images(self) -> int:
        """Unreadable images substituted so far in this cell (on_bad_image: skip); 0 otherwise."""
        datasets = [*self.train_sets.values(), *self.val_sets.values(), self.test_set, *self.test_sets.values()]
        return len({path for data in datasets for path in getattr(data, "skipped", ())})

    def classes(self, source: str | None = None) -> list[str]:
        """The class names of `source`'s label space: the dataset's in a DG cell; in a multi-task
        cell the task's, or (source None) those of θ0's head, the first task's."""
        if self.task_classes:
            return list(self.task_classes[source if source is not None else self.sources[0]])
        return list(self.index.classes)

    def model_meta(self, method: str, task: str | None = None) -> dict[str, Any]:
        """The metadata a saved model carries, so `dgmerge evaluate` can rebuild it alone."""
        meta = {"method": method, "dataset": self.cfg.data.dataset, "test_domain": self.test_domain,
                "seed": self.seed, "classes": self.classes(task),
                "backbone": self.cfg.backbone.model_dump(mode="json"),
                "head": type(self.theta0_for(task).head).__name__}
        return {**meta, "task": task} if task is not None else meta

    def head_row_name(self) -> str:
        """θ0's row: "zero_shot" under a CLIP text head, "linear_probe" under a fitted probe."""
        return "zero_shot" if type(self.theta0.head).__name__ == "ZeroShotHead" else "linear_probe"
