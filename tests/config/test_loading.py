"""Loading experiment configs: files, shipped names, `--set` overrides, errors that name the field."""

from pathlib import Path

import pytest

from dgmerge.config import ConfigError, load_config, parse_overrides


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


def test_overrides_are_yaml_values_and_apply(tmp_path):
    overrides = parse_overrides(["train.lr=1e-4", "seeds=[3]", "data.dataset=VLCS"])
    cfg = load_config(write(tmp_path, "train:\n  steps: 5\n"), overrides)
    assert cfg.train.lr == pytest.approx(1e-4) and cfg.train.steps == 5
    assert cfg.seeds == [3] and cfg.data.dataset == "VLCS"


def test_override_without_equals_is_an_error():
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["train.lr"])


def test_override_with_broken_yaml_is_a_config_error():
    with pytest.raises(ConfigError, match="seeds=\\[0"):
        parse_overrides(["seeds=[0"])


def test_override_into_a_value_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="'name' is not a section"):
        load_config(write(tmp_path, "name: x\n"), parse_overrides(["name.first=y"]))


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


@pytest.mark.parametrize("name", ["pacs_mobilenetv2", "bench_pacs_cpu", "pacs_mobilenetv2_sweep"])
def test_shipped_mobilenet_configs_name_the_pretrained_entry_not_its_recipe(name):
    path = Path(__file__).resolve().parents[2] / "src" / "dgmerge" / "configs" / f"{name}.yaml"
    backbone_section = path.read_text().split("\nbackbone:", 1)[1].split("\nprobe:", 1)[0]
    assert "pretrained: tflite_in1k" in backbone_section
    assert not any(key in backbone_section for key in ("pad_type", "mean:", "std:", "image_size:"))


def test_tuning_config_names_the_pretrained_entry():
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "pacs_tuning" / "tune.yaml"
    cfg = load_config(path)
    assert cfg.backbone.pretrained == "tflite_in1k" and cfg.backbone.mean is None and cfg.backbone.model_kwargs == {}
