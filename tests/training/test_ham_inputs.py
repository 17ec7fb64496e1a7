"""What train_ham refuses, in full, and which model a refusal names; its defaults and the
settings that reach its loop (batch seeds, the sign loss's mode, where the averages live)."""

from __future__ import annotations

import pytest
import torch

from dgmerge.config import HamConfig, TrainConfig
from dgmerge.training import ham as ham_module
from dgmerge.training.ham import train_ham

from .kill import domain, theta0

SOURCES = ("a", "b", "c")
TRAIN = {s: domain(i) for i, s in enumerate(SOURCES)}
VAL = {s: domain(10 + i, n=6) for i, s in enumerate(SOURCES)}
CFG = TrainConfig(steps=1, batch_size=6, eval_every=1)


def refusal(models, train=TRAIN, val=VAL) -> str:
    with pytest.raises(ValueError) as error:
        train_ham(models, train, val, CFG, HamConfig(), seed=0)
    return str(error.value)


def test_given_models_are_checked_one_by_one_against_the_first():
    assert refusal([theta0(), theta0()]) == "got 2 models for 3 sources (a, b, c)"
    moved = [theta0() for _ in SOURCES]
    with torch.no_grad():
        moved[1].encoder[0].bias.add_(1.0)  # the second model: the refusal must name source b
    assert refusal(moved) == "the model for source 'b' does not start from the same θ0 as the first"
    other = [theta0() for _ in SOURCES]
    other[1].encoder[0].bias.requires_grad_(False)
    assert refusal(other) == "the model for source 'b' trains other parameters than the first"


def test_bad_domains_and_frozen_models_are_refused_in_full():
    assert refusal(theta0().requires_grad_(False)) == "no trainable parameters: check the `trainable` setting"
    assert refusal(theta0(), train={}) == "train_ham needs at least one source domain"
    assert refusal(theta0(), val={**VAL, "target": VAL["a"], "x": VAL["b"]}) == (
        "validation domain(s) target, x are not sources (a, b, c)")


def spy_streams(monkeypatch) -> list[dict]:
    """The keyword arguments of every BatchStream train_ham opens."""
    opened: list[dict] = []
    real = ham_module.BatchStream

    def spy(*args, **kwargs):
        opened.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(ham_module, "BatchStream", spy)
    return opened


def test_defaults_load_batches_in_this_process_and_name_the_run_ham(monkeypatch, capsys):
    opened = spy_streams(monkeypatch)
    monkeypatch.delenv("DGMERGE_QUIET", raising=False)
    train_ham(theta0(), TRAIN, VAL, CFG, HamConfig(), seed=0)
    assert [s["num_workers"] for s in opened] == [0, 0, 0]
    assert capsys.readouterr().err.startswith("ham: step 1/1 (100%)")


@pytest.mark.parametrize("scheme, seeds", [("single_source", [2000, 2000, 2000]), ("erm", [2000, 2001, 2002])])
def test_each_sources_batches_are_drawn_as_the_chosen_baseline_draws_them(monkeypatch, scheme, seeds):
    opened = spy_streams(monkeypatch)
    train_ham(theta0(), TRAIN, VAL, CFG, HamConfig(batch_seeds=scheme), seed=2)
    assert [s["seed"] for s in opened] == seeds


def test_fp16_on_the_cpu_is_refused_before_training():
    with pytest.raises(ValueError, match=r"^precision fp16 needs a CUDA device; on the CPU use bf16 or fp32$"):
        train_ham(theta0(), TRAIN, VAL, CFG.model_copy(update={"precision": "fp16"}), HamConfig(), seed=0)


@pytest.mark.parametrize("mode", ["elementwise", "dot"])
def test_the_sign_loss_runs_in_the_configured_mode(monkeypatch, mode):
    modes = []
    real = ham_module.opa.sign_loss
    monkeypatch.setattr(ham_module.opa, "sign_loss", lambda *args: modes.append(args[3]) or real(*args))
    train_ham(theta0(), TRAIN, VAL, CFG, HamConfig(opa=True, opa_mode=mode), seed=0)
    assert modes == [mode] * 3


@pytest.mark.parametrize("historical", ["beta", "ema"])
def test_history_device_cpu_keeps_each_sources_average_on_the_cpu(historical):
    ham_cfg = HamConfig(historical=historical)
    on_cpu = ham_module._average(ham_cfg, CFG.model_copy(update={"history_device": "cpu"}))
    with_model = ham_module._average(ham_cfg, CFG)
    assert on_cpu.device == torch.device("cpu") and with_model.device is None
    assert ham_module._average(HamConfig(historical="none"), CFG) is None


def test_each_sources_optimizer_scaler_and_average_take_the_configured_settings():
    model = theta0()
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    cfg = CFG.model_copy(update={"lr": 0.02, "weight_decay": 0.3, "precision": "fp16"})
    run = ham_module.new_source_run("a", model, names, cfg, HamConfig(historical="ema", ema_decay=0.9))
    group = run.optimizer.param_groups[0]
    assert (group["lr"], group["weight_decay"]) == (0.02, 0.3)
    # fp16 (CUDA only; the loop refuses it on the CPU) gives each model its own enabled loss scaler.
    assert run.precision == "fp16" and run.scaler.is_enabled()
    assert run.average.decay == 0.9
