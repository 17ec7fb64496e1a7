"""regmean, fisher and greedy_soup of the single-source models, fed by the `merge` method from the cell's data."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from dgmerge.config import (BackboneConfig, ConfigError, DataConfig, ExperimentConfig, MergeSpec, ProbeConfig,
                            TrainConfig)
from dgmerge.config.loading import validate_config
from dgmerge.data.environments import DataLeakError
from dgmerge.data.imagefolder import scan_domains
from dgmerge.evaluation.results import read_results
from dgmerge.methods import build_cell, get_experiment
from dgmerge.methods import merge as merge_module
from dgmerge.methods.cell import Cell, SourceRun
from dgmerge.pipeline.experiment import run_experiment

from tiny import tiny_experiment

DATA_MERGES = [{"method": "regmean"}, {"method": "fisher"}, {"method": "greedy_soup"}]


def config(root: Path, out: Path, **kw) -> ExperimentConfig:
    # train_head: the tiny CNN has no linear layer or 1×1 conv; its trained head is RegMean's linear map.
    return tiny_experiment(root, out, save_models=False,
                           train={"lr": 1e-2, "trainable": "last:1", "train_head": True}, **kw)


def tiny_cell(root: Path, out: Path, merges: list[dict]) -> Cell:
    cfg = config(root, out, methods=["merge"], merges=[MergeSpec(**m) for m in merges])
    cell = build_cell(cfg, scan_domains(root / "Shapes"), "outline", 0, "key")
    cell.log = lambda _: None
    return cell


def moved_runs(cell: Cell, scale: float = 0.05) -> list[SourceRun]:
    """Source models away from θ0 on every trained tensor, without the cost of training."""
    runs = []
    for i, source in enumerate(cell.sources):
        model = cell.trainable_copy()
        generator = torch.Generator().manual_seed(i)
        with torch.no_grad():
            for name, param in model.named_parameters():
                if name in cell.trained_keys():
                    param.add_(scale * torch.randn(param.shape, generator=generator).to(param.device))
        runs.append(SourceRun(source, model, None, 0.0))  # type: ignore[arg-type]
    return runs


def spy_merges(monkeypatch) -> list[tuple[str, dict]]:
    """(method, hparams) of every merge the `merge` method runs."""
    calls: list[tuple[str, dict]] = []
    real = merge_module.merge_subset

    def spy(method, pretrained, finetuned, keys, **hparams):
        calls.append((method, hparams))
        return real(method, pretrained, finetuned, keys, **hparams)

    monkeypatch.setattr(merge_module, "merge_subset", spy)
    return calls


def test_data_merges_run_end_to_end_from_a_config(tiny_shapes, tmp_path):
    cfg = validate_config({"output_dir": str(tmp_path / "run"), "methods": ["merge"], "merges": DATA_MERGES,
                           **config(tiny_shapes, tmp_path / "run").model_dump(
                               mode="json", include={"seeds", "save_models", "data", "backbone", "probe", "train"})})
    rows = run_experiment(cfg, log=lambda _: None)
    assert [r["method"] for r in rows] == ["merge:regmean", "merge:fisher", "merge:greedy_soup"]
    stored = read_results(tmp_path / "run" / "results.jsonl")
    assert [r["method"] for r in stored] == [r["method"] for r in rows]
    by = {r["method"]: r for r in stored}
    for row in stored:
        assert row["method_group"] == "merge" and 0.0 <= row["test_acc"] <= 1.0 and 0.0 <= row["val_acc"] <= 1.0
        assert row["merge_hparams"] == {} and row["test_domain"] == "outline"
    assert by["merge:regmean"]["merge_statistics"] == {"split": "train", "batches": 20, "batch_size": 4,
                                                       "regmean_keys": 1}
    assert by["merge:fisher"]["merge_statistics"]["fisher_labels"] == "model"
    soup = by["merge:greedy_soup"]
    assert soup["soup_selection"] == "val" and set(soup["soup_ingredients"]) <= {"noisy", "solid"}
    assert soup["soup_ingredients"][0] == max(soup["source_val_acc"], key=soup["source_val_acc"].get)
    # The soup was chosen on the very source validation its row reports.
    assert soup["val_acc"] == pytest.approx(soup["soup_val_acc"])


def test_statistics_come_from_each_sources_training_split_once(tiny_shapes, tmp_path, monkeypatch):
    cell = tiny_cell(tiny_shapes, tmp_path / "run", [
        {"method": "regmean", "batches": 100}, {"method": "regmean", "label": "regmean-a0.5", "batches": 100,
                                                "hparams": {"alpha": 0.5}},
        {"method": "fisher", "batches": 100, "fisher_labels": "true"}])
    cell._sources = moved_runs(cell)
    seen: list[tuple[str, object, Dataset]] = []
    for name in ("collect_gram", "collect_fisher"):
        real = getattr(merge_module, name)

        def spy(model, loader, *args, _real=real, _name=name, **kwargs):
            seen.append((_name, model, loader.dataset))
            return _real(model, loader, *args, **kwargs)

        monkeypatch.setattr(merge_module, name, spy)
    calls = spy_merges(monkeypatch)
    rows = get_experiment("merge").run(cell)
    assert [r["method"] for r in rows] == ["merge:regmean", "merge:regmean-a0.5", "merge:fisher"]

    # Once per source model and setting, shared by both RegMean entries; always the model's own train_in.
    runs = cell.source_runs()
    assert [(name, model) for name, model, _ in seen] == [
        ("collect_gram", runs[0].model), ("collect_gram", runs[1].model),
        ("collect_fisher", runs[0].model), ("collect_fisher", runs[1].model)]
    for (_, _, data), run_ in zip(seen, runs + runs):
        assert data is cell.train_sets[run_.source]
    (_, first), (_, second), (_, fisher) = calls
    assert first["grams"] is second["grams"] and second["alpha"] == 0.5
    assert set(fisher["fishers"][0]) == set(cell.trained_keys())

    # By hand: the head's input Gram over all of each source's train_in, and nothing else.
    for run_, grams in zip(runs, first["grams"]):
        assert set(grams) == {"head.linear.weight"}
        train = features(run_.model, cell.train_sets[run_.source])
        torch.testing.assert_close(grams["head.linear.weight"].cpu(), train.T @ train / len(train))
        with_val = torch.cat([train, features(run_.model, cell.val_sets[run_.source])])
        assert not torch.allclose(grams["head.linear.weight"].cpu(), with_val.T @ with_val / len(with_val))


def features(model: torch.nn.Module, data: Dataset) -> torch.Tensor:
    with torch.no_grad():
        device = next(model.parameters()).device
        return torch.cat([model.encoder(x.to(device)) for x, _ in DataLoader(data, batch_size=64)]).cpu()


def test_statistics_refuse_test_domain_images(tiny_shapes, tmp_path):
    cell = tiny_cell(tiny_shapes, tmp_path / "run", [{"method": "regmean"}])
    cell._sources = moved_runs(cell)
    cell.train_sets[cell.sources[0]] = cell.test_set  # a test set posing as a source's training split
    with pytest.raises(DataLeakError, match="RegMean's Gram statistics"):
        get_experiment("merge").run(cell)


def test_regmean_of_one_source_model_is_that_model(tiny_shapes, tmp_path, monkeypatch):
    cell = tiny_cell(tiny_shapes, tmp_path / "run", [{"method": "regmean"}])
    only = moved_runs(cell)[0]
    cell._sources = [only]
    merged: list[dict] = []
    real_loaded = cell.loaded
    monkeypatch.setattr(cell, "loaded", lambda state: merged.append(state) or real_loaded(state))
    (row,) = get_experiment("merge").run(cell)
    assert row["merge_statistics"]["regmean_keys"] == 1
    want = only.model.state_dict()
    theta0 = cell.theta0.state_dict()
    # W* = G̃⁻¹ G̃ W = W for the head (whose Gram is singular: some ReLU features never fire on a
    # source this small); the rest is that model's (trained) or θ0's (frozen) tensors.
    assert float((want["head.linear.weight"] - theta0["head.linear.weight"]).abs().max()) > 1e-2
    for key, value in want.items():
        torch.testing.assert_close(merged[0][key], value, rtol=0.0, atol=0.0)


def test_a_merge_that_warns_says_so_in_its_row(tiny_shapes, tmp_path):
    # The tiny CNN's trained suffix has too few layer units for η = 0.2 to prune one: the
    # LwPTV-style row is TIES exactly, and its row says why (the bench's MobileNetV2 case).
    cell = tiny_cell(tiny_shapes, tmp_path / "run", [
        {"method": "lwptv", "label": "lwptv-style-ties", "hparams": {"eta": 0.2, "base": "ties", "keep": 0.2}},
        {"method": "ties", "hparams": {"keep": 0.2}}])
    cell._sources = moved_runs(cell)
    with pytest.warns(RuntimeWarning, match="prunes no layer"):
        lwptv, ties = get_experiment("merge").run(cell)
    assert "prunes no layer of any task" in lwptv["merge_warning"] and "merge_warning" not in ties
    assert (lwptv["test_acc"], lwptv["val_acc"]) == (ties["test_acc"], ties["val_acc"])


class Relabelled(Dataset):
    """`data`'s images (and sample paths) under one label for all."""

    def __init__(self, data: Dataset, label: int):
        self.data, self.label = data, label
        self.samples = [(path, label) for path, _ in data.samples]

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int):
        return self.data[index][0], self.label


def always(cell: Cell, label: int) -> torch.nn.Module:
    """θ0 whose trained head predicts `label` for every input."""
    model = cell.trainable_copy()
    with torch.no_grad():
        model.head.linear.weight.zero_()
        model.head.linear.bias.zero_()
        model.head.linear.bias[label] = 5.0
    return model


def test_greedy_soup_chooses_on_source_validation_not_the_test_domain(tiny_shapes, tmp_path):
    cell = tiny_cell(tiny_shapes, tmp_path / "run", [{"method": "greedy_soup"}])
    first, second = cell.sources
    # Model 0 always says class 0, model 1 class 1; their average ties and says class 0.
    # Validation is all class 1 (model 1 wins), the test domain all class 0 (model 0 would).
    cell._sources = [SourceRun(first, always(cell, 0), None, 0.0),  # type: ignore[arg-type]
                     SourceRun(second, always(cell, 1), None, 0.0)]  # type: ignore[arg-type]
    cell.val_sets = {d: Relabelled(data, 1) for d, data in cell.val_sets.items()}
    cell.test_set = Relabelled(cell.test_set, 0)
    (row,) = get_experiment("merge").run(cell)
    assert row["source_val_acc"] == {first: 0.0, second: 1.0}
    assert row["soup_ingredients"] == [second]  # the average scores 0 on validation: not added
    assert row["val_acc"] == 1.0 and row["test_acc"] == 0.0


def test_config_accepts_data_merges_and_still_checks_their_hparams():
    cfg = validate_config({"merges": [*DATA_MERGES, {"method": "regmean", "label": "r", "batches": 5,
                                                     "hparams": {"alpha": 0.5, "conv1x1": "mean"}},
                                      {"method": "fisher", "label": "f", "fisher_labels": "true"}]})
    assert [m.name for m in cfg.merges] == ["regmean", "fisher", "greedy_soup", "r", "f"]
    # Settings added later stay out of dumps at their defaults (experiment keys of older runs hold).
    assert cfg.model_dump(mode="json")["merges"][0] == {"method": "regmean", "hparams": {}, "label": None}
    refused = [
        ({"method": "regmean", "hparams": {"alpah": 0.5}}, "unknown hyperparameter"),
        ({"method": "regmean", "hparams": {"alpha": 1.5}}, "alpha"),
        ({"method": "fisher", "hparams": {"eps": -1.0}}, "eps"),
        ({"method": "greedy_soup", "hparams": {"strictly": True}}, "unknown hyperparameter"),
        ({"method": "regmean", "hparams": {"grams": []}}, "fed by the `merge` experiment method"),
        ({"method": "greedy_soup", "hparams": {"scores": [0.5, 0.5]}}, "fed by the `merge` experiment method"),
        ({"method": "average", "batches": 5}, "batches applies to regmean and fisher"),
        ({"method": "regmean", "fisher_labels": "true"}, "fisher_labels applies to fisher only"),
        ({"method": "regmean", "batches": 0}, "batches"),
    ]
    for entry, message in refused:
        with pytest.raises(ConfigError, match=message):
            validate_config({"merges": [entry]})


def test_regmean_without_a_linear_layer_to_solve_says_so(tiny_shapes, tmp_path):
    cell = tiny_cell(tiny_shapes, tmp_path / "run", [{"method": "regmean"}])
    cell.cfg.train.train_head = False  # the tiny CNN's trained block is 3×3 convs and a norm only
    cell._sources = moved_runs(cell)
    with pytest.raises(ValueError, match="no trained tensor of tiny is a linear or 1×1-conv weight"):
        get_experiment("merge").run(cell)


def test_mobilenet_grams_cover_its_1x1_convs_from_cached_activations(tiny_shapes, tmp_path, monkeypatch):
    # A randomly initialised MobileNetV2 under the feature cache: the trained blocks' pointwise
    # convs get Grams of exactly what they see on images, their depthwise convs are averaged.
    cfg = ExperimentConfig(
        output_dir=tmp_path / "run", seeds=[0], save_models=False, methods=["merge"],
        merges=[MergeSpec(method="regmean", batches=100)],
        data=DataConfig(root=tiny_shapes, dataset="Shapes", test_domains=["outline"]),
        backbone=BackboneConfig(kind="timm", name="mobilenetv2_050", image_size=32),
        probe=ProbeConfig(epochs=2, batch_size=32),
        train=TrainConfig(batch_size=8, eval_batch_size=64, trainable="last:1", feature_cache="memory"))
    cell = build_cell(cfg, scan_domains(tiny_shapes / "Shapes"), "outline", 0, "key")
    cell.log = lambda _: None
    assert cell.theta0.cut is not None
    cell._sources = moved_runs(cell, scale=0.01)
    calls = spy_merges(monkeypatch)
    (row,) = get_experiment("merge").run(cell)
    grams = calls[0][1]["grams"][0]
    pointwise = {k for k, v in cell.theta0.state_dict().items()
                 if k in cell.trained_keys() and v.dim() == 4 and v.shape[2:] == (1, 1)}
    assert pointwise and set(grams) == pointwise
    assert row["merge_statistics"]["regmean_keys"] == len(pointwise)
    # By hand, from images through the whole encoder: the last 1×1 conv's input Gram.
    key = sorted(pointwise)[-1]
    model = cell.source_runs()[0].model
    layer = model.get_submodule(key.removesuffix(".weight"))
    images = [x for x, _ in DataLoader(images_of(cell, cell.sources[0]), batch_size=64)]
    inputs: list[torch.Tensor] = []
    handle = layer.register_forward_pre_hook(lambda _m, args: inputs.append(args[0]))
    with torch.no_grad():
        for x in images:
            model.encoder(x.to(next(model.parameters()).device))
    handle.remove()
    rows = torch.cat([x.permute(0, 2, 3, 1).reshape(-1, x.shape[1]) for x in inputs]).double().cpu()
    torch.testing.assert_close(grams[key].cpu(), (rows.T @ rows / len(rows)).float(), rtol=1e-4, atol=1e-5)


def images_of(cell: Cell, source: str) -> Dataset:
    """`source`'s training split as images (the cell holds cached activations)."""
    from dgmerge.data.imagefolder import ImageDataset

    return ImageDataset(cell.envs.train_in[source], cell.backbone.preprocessing())


def test_regmean_keeps_the_mean_weight_of_an_input_dead_in_every_model():
    # Found through the hand check above: ReLU features that never (or seldom) fire on a source's
    # training split leave RegMean's system (near-)singular. The solve around the models' mean
    # keeps the mean's weights on dead inputs and one float32 model exactly, even at α = 1.
    from dgmerge.merging import merge

    x = torch.randn(20, 3, generator=torch.Generator().manual_seed(0))
    x[:, 2] = 0.0  # dead input
    gram = x.T @ x / len(x)
    rare = torch.randn(20, 4, generator=torch.Generator().manual_seed(1))
    rare[1:, 3] = 0.0
    rare[0, 3] = 1e-5  # fires once, faintly: a Gram eigenvalue near 1e-12
    w = torch.randn(5, 4, generator=torch.Generator().manual_seed(2))
    single = merge("regmean", {"w": torch.zeros(5, 4)}, [{"w": w}], grams=[{"w": rare.T @ rare / 20}], alpha=1.0)
    assert torch.equal(single["w"], w)
    w1, w2 = torch.randn(2, 3, dtype=torch.float64), torch.randn(2, 3, dtype=torch.float64)
    theta0 = {"w": torch.zeros(2, 3, dtype=torch.float64)}
    alone = merge("regmean", theta0, [{"w": w1}], grams=[{"w": gram.double()}])
    torch.testing.assert_close(alone["w"], w1)
    both = merge("regmean", theta0, [{"w": w1}, {"w": w2}], grams=[{"w": gram.double()}] * 2)
    torch.testing.assert_close(both["w"][:, 2], (w1[:, 2] + w2[:, 2]) / 2)
    # Equal Grams: the live columns are the mean too (the joint least squares of two models).
    torch.testing.assert_close(both["w"], (w1 + w2) / 2)
