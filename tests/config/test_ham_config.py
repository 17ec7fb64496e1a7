"""HAM's config section: every ablation is a config, bad values fail at config time, the reuse rule."""

import pytest
from pydantic import ValidationError

from dgmerge.config import HamConfig, can_reuse, training_key


def test_defaults_are_the_paper_settings():
    cfg = HamConfig()
    assert (cfg.sae, cfg.sae_rule, cfg.opa, cfg.opa_weight, cfg.opa_mode) == (True, "mean", True, 0.1, "elementwise")
    assert (cfg.historical, cfg.beta, cfg.merge_method, cfg.merge_hparams) == ("beta", 0.5, "rhm", {})


def test_ablations_are_configs():
    """Each ablation of HAM Tables 2-5 is a config; the merge-time ones can reuse HAM's training."""
    full = HamConfig()
    assert (full.sae, full.opa, full.historical, full.merge_method) == (True, True, "beta", "rhm")
    no_modules = HamConfig(sae=False, opa=False, historical="none")
    assert (no_modules.sae, no_modules.opa, no_modules.historical) == (False, False, "none")
    layer_level = HamConfig(merge_hparams={"trim": 0.2, "level": "tensor"})
    ties = HamConfig(merge_method="ties", merge_hparams={"keep": 0.2})
    assert can_reuse(layer_level, full) and can_reuse(ties, full) and can_reuse(HamConfig(historical="none"), full)
    assert not can_reuse(no_modules, full) and not can_reuse(HamConfig(beta=1.0), full)
    margin = HamConfig(sae_rule="margin", sae_margin=0.1, sae_max_borrow=4, sae_warmup_steps=100)
    assert (margin.sae_margin, margin.sae_max_borrow, margin.sae_warmup_steps) == (0.1, 4, 100)


@pytest.mark.parametrize("kwargs, field", [
    ({"sae_margn": 0.1}, "sae_margn"),
    ({"merge_method": "rmh"}, "merge_method"),
    ({"merge_hparams": {"trim": 2.0}}, "trim"),
    ({"merge_hparams": {"keep": 0.2}}, "keep"),  # a TIES hparam given to RHM
    ({"sae_margin": 0.1}, "sae_margin"),  # margin without sae_rule: margin
    ({"opa_weight": 0.0}, "opa_weight"),
    ({"beta": 0.0}, "beta"),
    ({"sae_max_borrow": 0}, "sae_max_borrow"),
    ({"historical": "swa"}, "historical"),
])
def test_bad_values_fail_at_config_time_naming_the_field(kwargs, field):
    with pytest.raises(ValidationError, match=field):
        HamConfig(**kwargs)


def test_unknown_method_lists_the_available_ones_and_assignment_is_checked():
    with pytest.raises(ValidationError, match="ties"):
        HamConfig(merge_method="nope")
    cfg = HamConfig()
    with pytest.raises(ValidationError):
        cfg.merge_method = "nope"


def test_reuse_rule_separates_merge_time_from_training_settings():
    base = HamConfig()
    # Merge-time changes and best-checkpoint merging reuse a run...
    assert can_reuse(HamConfig(merge_method="ties", merge_hparams={"keep": 0.2}), base)
    assert can_reuse(HamConfig(merge_hparams={"trim": 0.5, "level": "tensor"}), base)
    assert can_reuse(HamConfig(historical="none"), base)
    assert can_reuse(HamConfig(historical="none"), HamConfig(beta=2.0))
    # ...anything that changes the trained models does not.
    assert not can_reuse(HamConfig(sae=False), base)
    assert not can_reuse(HamConfig(opa_weight=1.0), base)
    assert not can_reuse(HamConfig(beta=1.0), base)
    # A run without averages cannot serve a variant that merges averages.
    assert not can_reuse(base, HamConfig(historical="none"))
    assert "merge_hparams" not in training_key(base) and "beta" not in training_key(HamConfig(historical="none"))
