"""YAML values reach each field as typed: text fields get the text, typed fields the typed value."""

import copy
import math
import pickle
from pathlib import Path
from typing import Any, Literal

import pytest

from dgmerge.config import ConfigError, ExperimentConfig, PlainScalar, load_config, parse_overrides, validate_config
from dgmerge.config.yaml_values import admits_text, annotation_at, core_value, load_yaml, resolve_for


def load_text(tmp_path: Path, text: str, overrides: list[str] | None = None) -> ExperimentConfig:
    path = tmp_path / "exp.yaml"
    path.write_text(text)
    return load_config(path, parse_overrides(overrides or []))


# --- text fields get the text as written
def test_set_feature_cache_off(tmp_path):
    assert load_text(tmp_path, "", ["train.feature_cache=off"]).train.feature_cache == "off"
    assert load_text(tmp_path, "train: {feature_cache: disk}\n", ["train.feature_cache=off"]).train.feature_cache == "off"


def test_feature_cache_off_in_a_yaml_file(tmp_path):
    assert load_text(tmp_path, "train:\n  feature_cache: off\n").train.feature_cache == "off"


def test_numbers_and_booleans_as_names(tmp_path):
    cfg = load_text(tmp_path, "name: 007\ndata:\n  dataset: yes\n  test_domains: ['2007', 2008, 1e3, off]\n"
                              "merges:\n  - {method: average, label: 1e-3}\n  - {method: ties, label: no}\n")
    assert cfg.name == "007" and cfg.data.dataset == "yes"
    assert cfg.data.test_domains == ["2007", "2008", "1e3", "off"]
    assert [m.name for m in cfg.merges] == ["1e-3", "no"]


def test_overrides_keep_text_for_text_fields(tmp_path):
    cfg = load_text(tmp_path, "", ["name=007", "data.test_domains=[2007, none]", "merges=[{method: average, label: on}]"])
    assert cfg.name == "007" and cfg.data.test_domains == ["2007", "none"] and cfg.merges[0].name == "on"


def test_paths_keep_their_text(tmp_path):
    cfg = load_text(tmp_path, "output_dir: 2024\ntrain: {feature_cache_dir: off}\n")
    assert cfg.output_dir == Path("2024") and cfg.train.feature_cache_dir == Path("off")


def test_quoted_strings_stay_strings(tmp_path):
    cfg = load_text(tmp_path, "name: 'true'\ndata: {test_domains: [\"1\"]}\ntrain: {feature_cache: \"off\"}\n")
    assert (cfg.name, cfg.data.test_domains, cfg.train.feature_cache) == ("true", ["1"], "off")


# --- typed fields still get typed values
@pytest.mark.parametrize("text, expected", [("yes", True), ("no", False), ("on", True), ("off", False),
                                            ("true", True), ("False", False), ("Y", True)])
def test_yaml_booleans_into_bool_fields(tmp_path, text, expected):
    cfg = load_text(tmp_path, f"save_models: {text}\ndata: {{train_augment: {text}}}\nham: {{sae: {text}}}\n",
                    [f"train.train_head={text}"])
    assert cfg.save_models is cfg.data.train_augment is cfg.ham.sae is cfg.train.train_head is expected


def test_numbers_into_float_and_int_fields(tmp_path):
    cfg = load_text(tmp_path, "seeds: [0, 0x10]\ndata: {holdout_fraction: .25}\ntrain: {lr: 1e-3, steps: 7}\n"
                              "ham: {beta: 2}\n", ["train.weight_decay=5e-2", "probe.epochs=3"])
    assert cfg.seeds == [0, 16] and cfg.data.holdout_fraction == 0.25
    assert cfg.train.lr == pytest.approx(1e-3) and cfg.train.steps == 7 and cfg.ham.beta == 2.0
    assert cfg.train.weight_decay == pytest.approx(0.05) and cfg.probe.epochs == 3


def test_a_wrong_type_is_still_an_error(tmp_path):
    with pytest.raises(ConfigError, match="train.steps"):
        load_text(tmp_path, "train: {steps: off}\n")


@pytest.mark.parametrize("null", ["null", "~", "", "Null"])
def test_null_into_optional_fields_is_none(tmp_path, null):
    cfg = load_text(tmp_path, f"data: {{test_domains: {null}, max_images_per_domain: {null}}}\n"
                              f"backbone: {{image_size: {null}, pretrained: {null}, checkpoint: {null}}}\n"
                              f"merges: [{{method: average, label: {null}}}]\n",
                    [f"train.feature_cache_dir={null}"])
    assert cfg.data.test_domains is cfg.data.max_images_per_domain is cfg.backbone.image_size is None
    assert cfg.backbone.pretrained is cfg.backbone.checkpoint is cfg.merges[0].label is None
    assert cfg.train.feature_cache_dir is None


# --- free-form fields (Any) get YAML 1.2 core values
def test_free_form_fields_read_yaml_1_2(tmp_path):
    cfg = load_text(tmp_path, "backbone: {kind: tiny_cnn, name: tiny, model_kwargs: {seed: 3}}\n"
                              "ham: {merge_method: ties, merge_hparams: {keep: 2e-1}}\n"
                              "ham_variants: [{label: v, set: {sae: off, opa: false, historical: none}}]\n"
                              "merges: [{method: ties, hparams: {keep: 1e-1, scale: 1}}]\n")
    assert cfg.backbone.model_kwargs == {"seed": 3}
    assert cfg.ham.merge_hparams == {"keep": pytest.approx(0.2)}
    assert cfg.ham_variants[0].set == {"sae": "off", "opa": False, "historical": "none"}
    variant = cfg.variant_config(cfg.ham_variants[0])
    assert (variant.sae, variant.opa, variant.historical) == (False, False, "none")
    assert cfg.merges[0].hparams == {"keep": pytest.approx(0.1), "scale": 1}


def test_free_form_override_reads_yaml_1_2(tmp_path):
    cfg = load_text(tmp_path, "", ["ham.merge_hparams.trim=4e-1", "backbone.model_kwargs.pad_type=same"])
    assert cfg.ham.merge_hparams == {"trim": pytest.approx(0.4)} and cfg.backbone.model_kwargs == {"pad_type": "same"}


@pytest.mark.parametrize("text, value", [
    ("true", True), ("FALSE", False), ("yes", "yes"), ("off", "off"), ("null", None), ("~", None), ("", None),
    ("7", 7), ("-007", -7), ("0o17", 15), ("0x1f", 31), ("1e-3", 1e-3), ("-.5", -0.5), ("3.", 3.0),
    (".inf", math.inf), ("-.Inf", -math.inf), ("1_000", "1_000"), ("2007-01-02", "2007-01-02"), ("1:30", "1:30"),
])
def test_core_schema(text, value):
    assert core_value(text) == value and type(core_value(text)) is type(value)


def test_core_nan():
    assert math.isnan(core_value(".nan"))


# --- the pieces
def test_plain_scalars_keep_text_and_yaml_1_1_value():
    loaded = load_yaml("a: off\nb: 007\nc: 'off'\nd: 1e-3\ne: [yes, ~]\non: 1\n")
    assert isinstance(loaded["a"], PlainScalar) and (str(loaded["a"]), loaded["a"].resolved) == ("off", False)
    assert (str(loaded["b"]), loaded["b"].resolved) == ("007", 7)
    assert type(loaded["c"]) is str and loaded["d"].resolved == "1e-3"
    assert [v.resolved for v in loaded["e"]] == [True, None]
    assert "on" in loaded  # a key keeps its text too


def test_plain_scalars_survive_copy_and_pickle():
    scalar = load_yaml("off")
    for clone in (copy.deepcopy(scalar), copy.copy(scalar), pickle.loads(pickle.dumps(scalar))):
        assert isinstance(clone, PlainScalar) and (str(clone), clone.resolved) == ("off", False)


@pytest.mark.parametrize("annotation, text", [
    (str, True), (Path, True), (Literal["off", "disk"], True), (str | None, True), (Path | None, True),
    (int, False), (bool, False), (float | None, False), (int | str, False), (Literal["a", 1], False), (Any, False),
    (list[str], False),
])
def test_which_fields_take_text(annotation, text):
    assert admits_text(annotation) is text


def test_resolve_for_settles_nested_values():
    raw = load_yaml("{a: [off, 2007], b: [on, 1e-3]}")
    assert resolve_for(dict[str, list[str]], raw) == {"a": ["off", "2007"], "b": ["on", "1e-3"]}
    assert resolve_for(dict[str, list[bool | float]], raw) == {"a": [False, 2007], "b": [True, 1e-3]}
    assert resolve_for(tuple[str, int], load_yaml("[007, 007]")) == ["007", 7]
    assert resolve_for(Any, raw) == {"a": ["off", 2007], "b": ["on", 1e-3]}
    assert resolve_for(str, "quoted") == "quoted" and resolve_for(int, 5) == 5  # not from YAML: unchanged


def test_annotation_at_follows_dotted_paths():
    assert annotation_at(ExperimentConfig, "train.lr") is float
    assert annotation_at(ExperimentConfig, "train.feature_cache") == Literal["off", "memory", "disk"]
    assert annotation_at(ExperimentConfig, "ham.merge_hparams.trim") is Any
    assert annotation_at(ExperimentConfig, "nope.x") is Any


def test_validate_config_accepts_plain_python_values():
    cfg = validate_config({"train": {"feature_cache": "memory", "lr": 0.5}, "data": {"train_augment": True}})
    assert (cfg.train.feature_cache, cfg.train.lr, cfg.data.train_augment) == ("memory", 0.5, True)
