"""The experiment loop's decisions without training: the key that decides which rows belong to a
run (and so what a resume skips), which cells a config plans, which methods it may name, and which
methods a results file says are done. End-to-end runs only see the consequences of these when a
resume goes wrong, so each is checked here against values written out by hand."""

from __future__ import annotations

import json
from functools import partial
from types import SimpleNamespace

import pytest

from dgmerge.config import BackboneConfig, DataConfig, ExperimentConfig
from dgmerge.config.loading import set_dotted
from dgmerge.pipeline import experiment
from dgmerge.pipeline.experiment import (
    check_methods,
    experiment_key,
    finished_methods,
    planned_cells,
    results_rows,
)

BASE = ExperimentConfig(output_dir="o", seeds=[0], methods=["erm"], data=DataConfig(root="r", dataset="X"),
                        backbone=BackboneConfig(kind="tiny_cnn", name="micro"))


def changed(path: str, value, cfg: ExperimentConfig = BASE) -> ExperimentConfig:
    """`cfg` with the dotted setting `path` set to `value`, validated again."""
    data = cfg.model_dump(mode="json")
    set_dotted(data, path, value)
    return ExperimentConfig.model_validate(data)


def test_the_key_of_a_config_is_pinned_so_runs_started_by_older_versions_still_resume():
    # Settings added since (precision, the probe split, MA/SWAD/DiWA, variants) leave the key of a
    # config that keeps their defaults as it was; a change here orphans every results file on disk.
    assert experiment_key(BASE) == "1fe6d710997a"


@pytest.mark.parametrize("path, value", [
    ("seeds", [1, 2]), ("methods", ["erm", "ham"]), ("output_dir", "elsewhere"), ("name", "other"),
    ("save_models", False), ("data.test_domains", ["a"]), ("data.num_workers", 4), ("data.cache_images", True),
    ("train.feature_cache", "disk"), ("train.feature_cache_dir", "cache"), ("train.checkpoint_every", 10),
    ("train.device", "cpu"), ("train.history_device", "cpu"), ("train.log_every_s", 1.0),
    ("probe.split_fraction", 0.3),  # only read when the probe is fitted on its own split
    ("ham_variants", [{"label": "opa_0.5", "set": {"opa_weight": 0.5}}]), ("ham_variant_runs", "reuse"),
])
def test_what_runs_and_how_fast_stays_out_of_the_key(path, value):
    assert experiment_key(changed(path, value)) == experiment_key(BASE)


@pytest.mark.parametrize("path, value", [
    ("train.lr", 1e-3), ("train.steps", 7), ("train.train_head", True), ("data.dataset", "Y"),
    ("data.holdout_fraction", 0.3), ("backbone.name", "tiny"), ("ham.opa_weight", 0.5),
    ("train.precision", "bf16"), ("probe.fit_on", "probe_split"),
    ("ma.start_step", 3), ("swad.tolerance_ratio", 1.5), ("diwa.runs", 6),
    ("ham.eval_every", 200),  # the best-checkpoint ablation picks among other steps
])
def test_what_changes_a_result_changes_the_key(path, value):
    assert experiment_key(changed(path, value)) != experiment_key(BASE)


def test_the_probe_splits_size_enters_the_key_once_the_probe_uses_it():
    split = changed("probe.fit_on", "probe_split")
    assert experiment_key(changed("probe.split_fraction", 0.3, split)) != experiment_key(split)


def test_methods_are_checked_before_anything_runs():
    check_methods(BASE)
    with pytest.raises(ValueError, match="name one method twice"):
        check_methods(changed("methods", ["linear_probe", "zero_shot"]))
    with pytest.raises(ValueError, match="ma.start_step=9 is past the last step"):
        check_methods(changed("ma.start_step", 9, changed("train.steps", 5, changed("methods", ["erm_ma"]))))
    tasks = changed("tasks", {"combos": [["a", "b"]]}, changed("train.feature_cache", "memory"))
    check_methods(changed("methods", ["single_source", "gating"], tasks))
    with pytest.raises(ValueError, match=r"methods \['erm', 'ham'\] need one label space shared by every source; the tasks of "
                       r"`tasks:` each have their own \(run single_source and gating on tasks\)"):
        check_methods(changed("methods", ["single_source", "erm", "ham"], tasks))


def index(*domains: str) -> SimpleNamespace:
    return SimpleNamespace(domains=domains)


def test_cells_are_every_seed_times_every_held_out_domain_in_order(monkeypatch):
    monkeypatch.setattr(experiment, "build_cell", lambda *args: args)
    cfg = changed("seeds", [3, 1])
    plan = planned_cells(cfg, index("a", "b", "c"), "K")
    assert [(seed, name) for seed, name, _ in plan] == [(3, "a"), (3, "b"), (3, "c"), (1, "a"), (1, "b"), (1, "c")]
    assert plan[4][2]() == (cfg, index("a", "b", "c"), "b", 1, "K")
    chosen = planned_cells(changed("data.test_domains", ["c", "a"], cfg), index("a", "b", "c"), "K")
    assert [(seed, name) for seed, name, _ in chosen] == [(3, "c"), (3, "a"), (1, "c"), (1, "a")]
    with pytest.raises(ValueError, match=r"test domains \['z'\] are not in r/X \(domains: a, b\)"):
        planned_cells(changed("data.test_domains", ["a", "z"]), index("a", "b"), "K")
    assert [name for _, name, _ in planned_cells(BASE, index("a", "b"), "K")] == ["a", "b"]  # 2 is enough
    with pytest.raises(ValueError, match=r"r/X has 1 domain\(s\); leave-one-out needs at least 2"):
        planned_cells(BASE, index("a"), "K")


def test_task_cells_are_every_seed_times_every_combination(monkeypatch):
    monkeypatch.setattr(experiment, "build_task_cell", lambda *args: args)
    cfg = changed("seeds", [0, 5], changed("tasks", {"combos": [["a", "b"], ["b", "digits"]]}))
    plan = planned_cells(cfg, index("a", "b"), "K")
    assert [(seed, name) for seed, name, _ in plan] == [(0, "a+b"), (0, "b+digits"), (5, "a+b"), (5, "b+digits")]
    assert plan[3][2]() == (cfg, index("a", "b"), ["b", "digits"], 5, "K")
    with pytest.raises(ValueError, match="unknown task"):
        planned_cells(changed("tasks", {"combos": [["a", "q"]]}), index("a", "b"), "K")


def write_rows(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def row(key, seed, domain, method, group=None):
    out = {"experiment_key": key, "seed": seed, "test_domain": domain, "method": method}
    return {**out, "method_group": group} if group else out


def test_finished_methods_are_this_experiments_rows_with_their_groups(tmp_path):
    rows = [row("K", 0, "a", "erm"), row("K", 0, "a", "merge:ties", "merge"), row("other", 0, "a", "ham"),
            row("K", 1, "a", "ham:no opa", "ham_variants"), row("K", 0, "b", "ham")]
    assert results_rows(tmp_path / "absent.jsonl") == []
    assert finished_methods([], "K") == {}
    assert finished_methods(rows, "K") == {
        (0, "a"): {"erm", "merge:ties", "merge"},
        # A variant is done one by one: its group is not, since a config may add variants.
        (1, "a"): {"ham:no opa"},
        (0, "b"): {"ham"}}


def test_the_loop_skips_finished_cells_and_runs_only_whats_left(tmp_path, monkeypatch):
    cfg = changed("methods", ["erm", "ham"], changed("output_dir", str(tmp_path)))
    key = experiment_key(cfg)
    write_rows(tmp_path / "results.jsonl", [row(key, 0, "a", "erm"), row(key, 0, "a", "ham"),
                                            row(key, 0, "b", "erm"), row("old", 0, "c", "erm")])
    monkeypatch.setattr(experiment, "scan_domains", lambda path: index("a", "b", "c"))
    built = []

    def build(name):
        built.append(name)
        return SimpleNamespace(name=name)

    monkeypatch.setattr(experiment, "planned_cells", lambda cfg_, index_, key_: [
        (0, name, partial(build, name)) for name in index_.domains])
    monkeypatch.setattr(experiment, "run_cell", lambda cell, todo: [(cell.name, todo, cell.done)])
    lines: list[str] = []
    rows = experiment.run_experiment(cfg, log=lines.append)
    assert built == ["b", "c"]
    assert rows == [("b", ["ham"], {"erm"}), ("c", ["erm", "ham"], set())]
    assert lines[0] == f"[skip] seed 0, test domain a: already in {tmp_path / 'results.jsonl'}"
    assert lines[1:] == ["== seed 0 · test domain b · methods ham", "== seed 0 · test domain c · methods erm, ham"]
    # A parallel worker runs only its own cells.
    built.clear()
    assert experiment.run_experiment(cfg, log=lines.append, cells={(0, "c")}) == [("c", ["erm", "ham"], set())]
    assert built == ["c"]


def test_the_loop_names_task_cells_as_tasks(tmp_path, monkeypatch):
    cfg = changed("tasks", {"combos": [["a", "b"]]}, changed("methods", ["single_source"],
                                                             changed("output_dir", str(tmp_path))))
    monkeypatch.setattr(experiment, "scan_domains", lambda path: index("a", "b"))
    monkeypatch.setattr(experiment, "planned_cells", lambda *args: [(0, "a+b", lambda: SimpleNamespace())])
    monkeypatch.setattr(experiment, "run_cell", lambda cell, todo: [])
    lines: list[str] = []
    experiment.run_experiment(cfg, log=lines.append)
    assert lines == ["== seed 0 · tasks a+b · methods single_source"]


def test_whether_a_method_is_done_depends_on_the_cells_seed(tmp_path, monkeypatch):
    # A variant run for seed 1 only: seed 1's cell has it to do, seed 0's does not.
    cfg = changed("ham_variants", [{"label": "v", "set": {"opa_weight": 0.5}, "seeds": [1]}],
                  changed("methods", ["ham_variants"], changed("seeds", [0, 1], changed("output_dir", str(tmp_path)))))
    monkeypatch.setattr(experiment, "scan_domains", lambda path: index("a", "b"))
    monkeypatch.setattr(experiment, "planned_cells", lambda cfg_, index_, key_: [
        (seed, "a", lambda: SimpleNamespace()) for seed in cfg_.seeds])
    monkeypatch.setattr(experiment, "run_cell", lambda cell, todo: [todo])
    lines: list[str] = []
    assert experiment.run_experiment(cfg, log=lines.append) == [["ham_variants"]]
    assert lines[0].startswith("[skip] seed 0, test domain a")


def test_status_says_what_each_cell_would_still_run_and_which_wait_for_the_tuning_seed(tmp_path, monkeypatch):
    cfg = changed("ham_tuning_seeds", [0], changed("ham_variants", [
        {"label": "lam1", "tuning": True, "set": {"opa_weight": 1.0}}], changed("methods", ["erm", "ham", "ham_variants"],
                                                                              changed("seeds", [0, 1], changed("output_dir", str(tmp_path))))))
    key = experiment_key(cfg)
    # Seed 0 finished held-out domain a, where λ = 1 won on source validation; b has only ERM.
    write_rows(tmp_path / "results.jsonl", [{**r, "val_acc": val} for r, val in [
        (row(key, 0, "a", "erm"), 0.95), (row(key, 0, "a", "ham"), 0.8), (row(key, 0, "a", "ham:lam1", "ham_variants"), 0.9),
        (row(key, 0, "b", "erm"), 0.9), (row("another run", 1, "a", "erm"), 0.9)]])
    monkeypatch.setattr(experiment, "scan_domains", lambda path: index("a", "b"))
    status = {(c.seed, c.name): c for c in experiment.experiment_status(cfg)}
    assert list(status) == [(0, "a"), (0, "b"), (1, "a"), (1, "b")]
    assert (status[0, "a"].rows, status[0, "a"].todo) == (3, [])
    assert (status[0, "b"].rows, status[0, "b"].todo) == (1, ["ham", "ham_variants"])
    # Seed 1 trains only the winner's point (λ = 1, as the variant), not HAM's default λ.
    assert (status[1, "a"].rows, status[1, "a"].todo, status[1, "a"].waiting) == (0, ["erm", "ham_variants"], False)
    # On b the winner is not known yet: everything is still to do, and the cell says it waits.
    assert (status[1, "b"].todo, status[1, "b"].waiting) == (["erm", "ham", "ham_variants"], True)


def test_each_part_counts_only_the_variants_it_runs(tmp_path, monkeypatch):
    # A merge-time variant (reuses HAM's training) belongs to the main part ("reuse"), one that
    # trains its own models to the ablations part ("train"): with the merge-time row written, the
    # main part has nothing left in the cell while the ablations part still has its training.
    variants = [{"label": "best", "set": {"historical": "none"}}, {"label": "no-opa", "set": {"opa": False}}]
    cfg = changed("ham_variants", variants, changed("methods", ["ham_variants"], changed("output_dir", str(tmp_path))))
    key = experiment_key(cfg)
    write_rows(tmp_path / "results.jsonl", [row(key, 0, "a", "ham:best", "ham_variants")])
    monkeypatch.setattr(experiment, "scan_domains", lambda path: index("a", "b"))
    todo = {part: experiment.experiment_status(changed("ham_variant_runs", part, cfg))[0].todo
            for part in ("reuse", "train", "all")}
    assert todo == {"reuse": [], "train": ["ham_variants"], "all": ["ham_variants"]}
