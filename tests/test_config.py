from pathlib import Path

import pytest

from dgmerge.config import ConfigError, load_config, parse_overrides, validate_config


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "exp.yaml"
    path.write_text(text)
    return path


def test_valid_yaml_loads_with_nested_fields(tmp_path):
    cfg = load_config(write(tmp_path, "seeds: [1, 2]\ntrain:\n  lr: 0.001\n  trainable: last:2\n"))
    assert cfg.seeds == [1, 2]
    assert cfg.train.lr == 0.001
    assert cfg.train.trainable == "last:2"


def test_unknown_key_names_the_field(tmp_path):
    with pytest.raises(ConfigError, match=r"train\.learning_rate"):
        load_config(write(tmp_path, "train:\n  learning_rate: 0.1\n"))


def test_wrong_type_names_the_field_and_file(tmp_path):
    path = write(tmp_path, "train:\n  steps: many\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "train.steps" in str(err.value) and str(path) in str(err.value)


@pytest.mark.parametrize("spec", ["last:0", "some", "last:-1", "last"])
def test_bad_trainable_spec_rejected(spec):
    with pytest.raises(ConfigError, match="trainable"):
        validate_config({"train": {"trainable": spec}})


def test_holdout_fraction_range():
    with pytest.raises(ConfigError, match="holdout_fraction"):
        validate_config({"data": {"holdout_fraction": 1.0}})


def test_template_without_slot_rejected():
    with pytest.raises(ConfigError, match="templates"):
        validate_config({"backbone": {"templates": ["a photo"]}})


def test_duplicate_methods_rejected():
    with pytest.raises(ConfigError, match="methods"):
        validate_config({"methods": ["erm", "erm"]})


def test_overrides_are_yaml_values_and_apply(tmp_path):
    overrides = parse_overrides(["train.lr=1e-4", "seeds=[3]", "data.dataset=VLCS"])
    cfg = load_config(write(tmp_path, "train:\n  steps: 5\n"), overrides)
    assert cfg.train.lr == pytest.approx(1e-4) and cfg.train.steps == 5
    assert cfg.seeds == [3] and cfg.data.dataset == "VLCS"


def test_override_without_equals_is_an_error():
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["train.lr"])


def test_non_mapping_yaml_rejected(tmp_path):
    with pytest.raises(ConfigError, match="mapping"):
        load_config(write(tmp_path, "- a\n- b\n"))


def test_shipped_configs_load_by_name_and_validate():
    cfg = load_config(Path("pacs_mobilenetv2"))
    assert cfg.backbone.name == "mobilenetv2_100" and cfg.train.feature_cache == "disk"
    assert [m.method for m in cfg.merges] == ["average", "task_arithmetic", "ties", "rhm"]
    assert load_config(Path("clip_vitb16_openclip.yaml")).backbone.kind == "open_clip"
    assert load_config(Path("bench_pacs_cpu")).train.trainable == "last:1"
    with pytest.raises(ConfigError, match="shipped configs: .*clip_vitb16_openclip.*pacs_mobilenetv2"):
        load_config(Path("no_such_config"))

