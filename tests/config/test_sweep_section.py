"""The sweep section: grid and space values reach the experiment field their dotted key names as typed."""

from pathlib import Path

import pytest

from dgmerge.config import ConfigError, SweepSpec, load_sweep, set_dotted, validate_config


def sweep_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "sweep.yaml"
    path.write_text("output_dir: runs/s\ntrain: {steps: 5}\n" + text)
    return path


def test_grid_values_are_typed_by_the_field_they_set(tmp_path):
    base, spec = load_sweep(sweep_file(tmp_path, "sweep:\n  grid:\n    train.feature_cache: [off, memory]\n"
                                                 "    ham.sae: [on, off]\n    data.test_domains: [[2007], [art]]\n"
                                                 "    train.lr: [1e-4, 3e-4]\n    ham.merge_hparams.trim: [2e-1]\n"))
    assert spec.grid == {"train.feature_cache": ["off", "memory"], "ham.sae": [True, False],
                         "data.test_domains": [["2007"], ["art"]], "train.lr": [1e-4, 3e-4],
                         "ham.merge_hparams.trim": [0.2]}
    raw = dict(base)
    set_dotted(raw, "train.feature_cache", spec.grid["train.feature_cache"][0])
    assert validate_config(raw).train.feature_cache == "off"


def test_space_values_are_typed_and_named_spaces_stay_names(tmp_path):
    _, spec = load_sweep(sweep_file(tmp_path, "sweep:\n  trials: 2\n  space: {train.feature_cache: [off, disk]}\n"))
    assert spec.space == {"train.feature_cache": ["off", "disk"]} and spec.trials == 2
    _, named = load_sweep(sweep_file(tmp_path, "sweep: {trials: 1, space: ham, seed: 0x2}\n"))
    assert (named.space, named.seed) == ("ham", 2)


def test_bad_sweep_sections_name_the_file(tmp_path):
    for text in ("sweep: {grid: {train.lr: []}}\n", "sweep: 3\n", "sweep: {trails: 2}\n"):
        with pytest.raises(ConfigError, match="invalid sweep section"):
            load_sweep(sweep_file(tmp_path, text))


def test_schema_is_the_one_the_pipeline_uses():
    from dgmerge.pipeline import sweep

    assert sweep.SweepSpec is SweepSpec and sweep.load_sweep is load_sweep
