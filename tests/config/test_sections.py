"""The sections of an experiment config: each bad value fails at validation, naming its field."""

import pytest

from dgmerge.config import (MERGES_NEEDING_DATA, BackboneConfig, ConfigError, ExperimentConfig, load_config,
                             validate_config)
from dgmerge.models import LOADERS


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


def test_backbone_kind_is_any_registered_loader_and_the_error_lists_them(monkeypatch):
    assert BackboneConfig.model_fields["kind"].annotation is str  # no closed list beside the registry
    assert all(BackboneConfig(kind=kind).kind == kind for kind in LOADERS)
    with pytest.raises(ConfigError) as err:
        validate_config({"backbone": {"kind": "nope"}})
    assert "backbone.kind" in str(err.value) and ", ".join(sorted(LOADERS)) in str(err.value)
    monkeypatch.setitem(LOADERS, "example", lambda cfg: None)
    assert BackboneConfig(kind="example").kind == "example"  # a new loader needs no config change


def test_methods_are_free_names_without_a_registry():
    assert validate_config({"methods": ["anything", "erm"]}).methods == ["anything", "erm"]


def test_methods_checked_against_the_registry_when_given():
    registered = ["linear_probe", "erm", "merge"]
    cfg = validate_config({"methods": ["erm", "merge"]}, methods=registered)
    assert cfg.methods == ["erm", "merge"]
    with pytest.raises(ConfigError) as err:
        validate_config({"methods": ["erm", "x"]}, source="exp.yaml", methods=registered)
    assert str(err.value) == ("exp.yaml: invalid config: methods: unknown experiment method 'x'; "
                              "registered: linear_probe, erm, merge")


def test_unknown_methods_and_other_errors_come_in_one_list(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("methods: [erm, x]\ntrain: {steps: 0}\n")
    with pytest.raises(ConfigError) as err:
        load_config(path, methods={"erm", "merge"})
    message = str(err.value)
    assert message.startswith(f"{path}: invalid config: ")
    assert "train.steps" in message and "methods: unknown experiment method 'x'; registered: erm, merge" in message


def test_repeated_methods_still_rejected_with_a_registry():
    with pytest.raises(ConfigError, match="listed twice"):
        validate_config({"methods": ["erm", "erm"]}, methods=["erm"])


def test_assignment_is_validated_without_a_registry():
    cfg = ExperimentConfig()
    cfg.methods = ["erm", "custom"]
    with pytest.raises(ValueError, match="listed twice"):
        cfg.methods = ["erm", "erm"]


def test_merges_needing_data_are_accepted_but_not_their_data():
    # The `merge` experiment method feeds their statistics and evaluation from the cell's data.
    cfg = validate_config({"merges": [{"method": m} for m in MERGES_NEEDING_DATA]})
    assert [m.method for m in cfg.merges] == list(MERGES_NEEDING_DATA)
    with pytest.raises(ConfigError, match="regmean: hparams grams are fed by the `merge` experiment method"):
        validate_config({"merges": [{"method": "regmean", "hparams": {"grams": []}}]})
