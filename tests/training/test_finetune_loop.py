"""fine_tune's loop against hand computations: one AdamW step with decoupled weight decay, each
domain's share of the loss, what observers and validation receive, the loss scaler's state across a
resume, the progress lines and the run's wall time."""

from __future__ import annotations

import time

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from dgmerge.config import TrainConfig
from dgmerge.models.classifier import Classifier
from dgmerge.training import finetune as finetune_module
from dgmerge.training.checkpoint import Checkpointer
from dgmerge.training.finetune import fine_tune

from .kill import KillAfterSave, Killed


def linear_model(seed: int = 0) -> Classifier:
    torch.manual_seed(seed)
    return Classifier(nn.Linear(2, 4), nn.Linear(4, 3))


def repeated(x: list[float], label: int, n: int = 6) -> TensorDataset:
    """n copies of one sample: any batch of it is the same batch, whatever the shuffle."""
    return TensorDataset(torch.tensor([x] * n), torch.full((n,), label))


def test_one_step_is_adamw_with_decoupled_weight_decay_at_the_configured_lr():
    data = repeated([1.0, -2.0], 2)
    cfg = TrainConfig(steps=1, batch_size=6, lr=0.05, weight_decay=0.3, eval_every=1)
    model = linear_model()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    # By hand: the gradient of the mean CE at θ0, then AdamW's first step (bias-corrected moments
    # m̂ = g, v̂ = g²), after decaying the weights by lr·wd.
    reference = linear_model()
    loss = F.cross_entropy(reference(data.tensors[0]), data.tensors[1])
    grads = dict(zip([n for n, _ in reference.named_parameters()], torch.autograd.grad(loss, list(reference.parameters()))))
    expected = {n: p * (1 - 0.05 * 0.3) - 0.05 * grads[n] / (grads[n].abs() + 1e-8) for n, p in before.items()}
    result = fine_tune(model, {"a": data}, {}, cfg, seed=0)
    for name, value in result.final_state.items():
        torch.testing.assert_close(value, expected[name], rtol=1e-5, atol=1e-6)
    assert result.history[0]["loss"] == pytest.approx(loss.item(), rel=1e-6)


def test_each_domains_loss_is_its_own_share_of_the_batch():
    domains = {"a": repeated([1.0, 0.0], 0), "b": repeated([0.0, 3.0], 1), "c": repeated([-2.0, 1.0], 2)}
    theta0 = linear_model()
    by_hand = {d: F.cross_entropy(theta0(data.tensors[0][:1]), data.tensors[1][:1]).item()
               for d, data in domains.items()}
    assert len({round(v, 4) for v in by_hand.values()}) == 3  # three different numbers to tell apart
    result = fine_tune(linear_model(), domains, {}, TrainConfig(steps=1, batch_size=4), seed=0)
    first = result.history[0]
    for d, value in by_hand.items():
        assert first[f"loss/{d}"] == pytest.approx(value, rel=1e-5)
    assert first["loss"] == pytest.approx(sum(by_hand.values()) / 3, rel=1e-5)


class Spy:
    """An observer that asks for the validation loss at even steps and records what it gets."""

    name = "spy"

    def __init__(self):
        self.val_losses: list[tuple] = []

    def on_step(self, step, model):
        pass

    def wants_val_loss(self, step, total_steps):
        return step % 2 == 0

    def on_val_loss(self, step, model, loss):
        self.val_losses.append((step, model, loss))

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


def test_observers_get_the_step_the_model_and_the_mean_validation_loss(monkeypatch):
    precisions = []
    real_loss, real_acc = finetune_module.validation_loss, finetune_module.validation_accuracy
    monkeypatch.setattr(finetune_module, "validation_loss",
                        lambda m, v, b, p: precisions.append(("loss", p)) or real_loss(m, v, b, p))
    monkeypatch.setattr(finetune_module, "validation_accuracy",
                        lambda m, v, b, p: precisions.append(("acc", p)) or real_acc(m, v, b, p))
    spy, model = Spy(), linear_model()
    val = {"a": repeated([1.0, 0.0], 0), "b": repeated([0.0, 3.0], 1)}
    cfg = TrainConfig(steps=4, batch_size=6, lr=1e-2, eval_every=4, precision="bf16")
    result = fine_tune(model, {"a": repeated([1.0, 0.0], 0)}, val, cfg, seed=0, observers=[spy])
    assert [(step, m is model) for step, m, _ in spy.val_losses] == [(2, True), (4, True)]
    assert [loss for _, _, loss in spy.val_losses] == [result.history[1]["val_loss"], result.history[3]["val_loss"]]
    assert precisions == [("loss", "bf16"), ("loss", "bf16"), ("acc", "bf16")]
    with pytest.raises(ValueError, match=r"^observers \['spy'\] need the source validation loss, but there are "
                                         r"no validation sets$"):
        fine_tune(linear_model(), {"a": repeated([1.0, 0.0], 0)}, {}, cfg, seed=0, observers=[Spy()])


def test_the_loss_scalers_state_is_saved_and_restored_on_resume(tmp_path, monkeypatch):
    """fp16 (CUDA only) enables the scaler; here an enabled CPU scaler stands in, so the state a
    checkpoint carries can be checked on any machine. Resumed at the saved scale, not a fresh one."""
    made = []

    def scaler(device, precision, scale=[8.0, 1024.0]):  # noqa: B006 - the runs take the scales in turn
        made.append(precision)
        return torch.amp.GradScaler("cpu", init_scale=scale[len(made) - 1], growth_interval=1000)

    monkeypatch.setattr(finetune_module, "grad_scaler", scaler)
    cfg = TrainConfig(steps=6, batch_size=6, lr=1e-2, eval_every=3)
    train = {"a": repeated([1.0, 0.0], 0)}
    path = tmp_path / "run.ckpt"
    with pytest.raises(Killed):
        fine_tune(linear_model(), train, {}, cfg, seed=0, checkpoint=KillAfterSave(path, 2, 2))
    assert torch.load(path, weights_only=False)["scaler"]["scale"] == 8.0
    saved_at_4 = []
    real_save = Checkpointer.save
    monkeypatch.setattr(Checkpointer, "save", lambda self, payload: saved_at_4.append(payload["scaler"]["scale"])
                        or real_save(self, payload))
    fine_tune(linear_model(), train, {}, cfg, seed=0, checkpoint=Checkpointer(path, 2))
    assert saved_at_4 == [8.0] and made == ["fp32", "fp32"]


def test_progress_lines_carry_each_steps_loss_and_the_run_reports_its_wall_time(monkeypatch, capsys):
    monkeypatch.delenv("DGMERGE_QUIET", raising=False)
    monkeypatch.delenv("DGMERGE_LOG_EVERY", raising=False)
    cfg = TrainConfig(steps=3, batch_size=6, lr=1e-2, log_every_s=0)
    before = time.perf_counter()
    result = fine_tune(linear_model(), {"a": repeated([1.0, 0.0], 0)}, {}, cfg, seed=0, desc="run x")
    elapsed = time.perf_counter() - before
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(" loss ")[0] for line in lines[:3]] == [
        "run x: step 1/3 (33%)", "run x: step 2/3 (66%)", "run x: step 3/3 (100%)"]
    for line, record in zip(lines, result.history):
        assert f" loss {record['loss']:.4g} images/s " in line
    assert 0 < result.wall_time_s <= elapsed
