"""Observers on fine_tune's trajectory: the moving average, SWAD's segments, resume, and a run left unchanged."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dgmerge.config import TrainConfig
from dgmerge.training.checkpoint import Checkpointer
from dgmerge.training.finetune import fine_tune, validation_loss
from dgmerge.training.observers import MovingAverage, trainable_state
from dgmerge.training.swad import LossValley, SwadObserver

from .kill import Killed, KillAfterSave, domain, theta0




TRAIN = {"a": domain(0), "b": domain(1, shift=0.5)}
VAL = {"a": domain(2), "b": domain(3)}
CFG = TrainConfig(steps=9, batch_size=6, lr=2e-2, weight_decay=0.1, eval_every=3)


class Recorder:
    """Keeps a copy of every iterate it is shown, by step."""

    name = "recorder"

    def __init__(self):
        self.iterates: dict[int, dict[str, torch.Tensor]] = {}

    def on_step(self, step, model):
        self.iterates[step] = {k: v.detach().clone() for k, v in trainable_state(model).items()}

    def wants_val_loss(self, step, total_steps):
        return False

    def on_val_loss(self, step, model, loss):
        pass

    def state_dict(self):
        return {"iterates": {str(k): v for k, v in self.iterates.items()}}

    def load_state_dict(self, state):
        self.iterates = {int(k): v for k, v in state["iterates"].items()}


class RecordingValley(LossValley):
    """A LossValley that also keeps what it was fed."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fed: list[tuple[dict[str, torch.Tensor], int, float]] = []

    def update(self, state, steps, loss):
        self.fed.append(({k: v.clone() for k, v in state.items()}, steps, loss))
        super().update(state, steps, loss)


def assert_same_states(a, b):
    assert a.keys() == b.keys()
    for key in a:  # on the CPU: runs train on CUDA where there is one (device "auto")
        torch.testing.assert_close(a[key].cpu(), b[key].cpu(), rtol=0, atol=0)


def test_ma_by_hand_on_a_one_weight_model():
    model = nn.Linear(1, 1, bias=False)
    from_0, from_1 = MovingAverage(0), MovingAverage(1)
    for step, weight in enumerate([1.0, 2.0, 6.0]):
        with torch.no_grad():
            model.weight.fill_(weight)
        from_0.on_step(step, model)
        from_1.on_step(step, model)
    assert from_0.average()["weight"].item() == 3.0  # (1 + 2 + 6) / 3
    assert from_1.average()["weight"].item() == 4.0  # (2 + 6) / 2
    assert (from_0.count, from_1.first_step, from_1.last_step) == (3, 1, 2)
    with pytest.raises(ValueError, match="holds no iterate"):
        MovingAverage(5).average()


def test_ma_started_at_the_last_step_is_the_last_weights():
    ma = MovingAverage(start_step=CFG.steps)
    result = fine_tune(theta0(), TRAIN, VAL, CFG, seed=1, observers=[ma])
    assert ma.count == 1
    assert_same_states(ma.averaged(result.final_state), result.final_state)


def test_ma_from_step_0_is_the_mean_of_every_iterate_theta0_included():
    ma, recorder = MovingAverage(start_step=0), Recorder()
    result = fine_tune(theta0(), TRAIN, VAL, CFG, seed=1, observers=[ma, recorder])
    assert sorted(recorder.iterates) == list(range(CFG.steps + 1))
    mean = {k: torch.stack([it[k] for it in recorder.iterates.values()]).mean(0) for k in recorder.iterates[0]}
    averaged = ma.averaged(result.final_state)
    for key, value in mean.items():
        torch.testing.assert_close(averaged[key].cpu(), value.cpu())
    # The frozen head is not averaged: it stays θ0's bit for bit.
    assert_same_states({k: v for k, v in averaged.items() if k.startswith("head.")},
                       {k: v for k, v in theta0().state_dict().items() if k.startswith("head.")})


def test_observers_leave_the_run_itself_unchanged():
    plain = fine_tune(theta0(), TRAIN, VAL, CFG, seed=1)
    swad = SwadObserver(LossValley(3, 6, 1.2), every=2)
    watched = fine_tune(theta0(), TRAIN, VAL, CFG, seed=1, observers=[MovingAverage(2), swad])
    assert_same_states(plain.final_state, watched.final_state)
    assert_same_states(plain.best_state, watched.best_state)
    assert (plain.best_step, plain.best_val_acc) == (watched.best_step, watched.best_val_acc)
    assert [h["loss"] for h in plain.history] == [h["loss"] for h in watched.history]
    # The validation loss is computed only where SWAD asks: every K = 2 steps and at the end.
    assert [h["step"] for h in watched.history if "val_loss" in h] == [2, 4, 6, 8, 9]
    assert not any("val_loss" in h for h in plain.history)


def test_swad_segments_are_the_dense_averages_of_k_steps_and_their_validation_loss():
    valley, recorder = RecordingValley(3, 6, 1.2), Recorder()
    swad = SwadObserver(valley, every=4)
    result = fine_tune(theta0(), TRAIN, VAL, CFG, seed=1, observers=[swad, recorder])
    assert [steps for _, steps, _ in valley.fed] == [4, 4, 1]  # steps 1-4, 5-8, 9
    bounds = [(1, 4), (5, 8), (9, 9)]
    for (state, _, _), (first, last) in zip(valley.fed, bounds):
        for key in state:
            expected = torch.stack([recorder.iterates[s][key] for s in range(first, last + 1)]).mean(0)
            torch.testing.assert_close(state[key].cpu(), expected.cpu())
    losses = {h["step"]: h["val_loss"] for h in result.history if "val_loss" in h}
    assert [loss for _, _, loss in valley.fed] == [losses[4], losses[8], losses[9]]
    # The loss is the mean over source domains of each one's mean cross-entropy, at that step's weights.
    model = theta0()
    model.load_state_dict(result.final_state)
    by_domain = validation_loss(model, VAL, 64)
    assert losses[9] == pytest.approx((by_domain["a"] + by_domain["b"]) / 2)
    # Three segments cannot converge (N_s = 3 needs the first to be the minimum): the fallback.
    final = swad.averaged(result.final_state)
    assert valley.summary()["window"][1] == 9 and set(final) == set(result.final_state)


def kill_and_resume(tmp_path, cfg, observers):
    """(uninterrupted run, its observers, killed-at-step-6-and-resumed run, its observers)."""
    full_obs = observers()
    full = fine_tune(theta0(), TRAIN, VAL, cfg, seed=1, observers=full_obs)
    path = tmp_path / "erm.ckpt"
    with pytest.raises(Killed):
        fine_tune(theta0(), TRAIN, VAL, cfg, seed=1, checkpoint=KillAfterSave(path, 2, 6), observers=observers())
    resumed_obs = observers()
    resumed = fine_tune(theta0(), TRAIN, VAL, cfg, seed=1, checkpoint=Checkpointer(path, 2), observers=resumed_obs)
    return full, full_obs, resumed, resumed_obs


def test_kill_and_resume_ends_with_the_same_ma_and_swad_weights(tmp_path):
    def observers():
        return [MovingAverage(3), SwadObserver(LossValley(2, 2, 1.2), every=1)]

    # A high learning rate makes the validation loss turn up at step 5: SWAD converges before the kill.
    cfg = CFG.model_copy(update={"steps": 16, "lr": 0.3})
    full, full_obs, resumed, resumed_obs = kill_and_resume(tmp_path, cfg, observers)
    assert_same_states(full.final_state, resumed.final_state)
    for a, b in zip(full_obs, resumed_obs):
        assert_same_states(a.averaged(full.final_state), b.averaged(resumed.final_state))
    assert full_obs[1].valley.summary() == resumed_obs[1].valley.summary()
    assert full_obs[1].valley.converge_step == 4 and full_obs[1].valley.window_start == 4


def test_resuming_without_an_observers_saved_state_is_refused(tmp_path):
    path = tmp_path / "erm.ckpt"
    with pytest.raises(Killed):
        fine_tune(theta0(), TRAIN, VAL, CFG, seed=1, checkpoint=KillAfterSave(path, 2, 4))
    with pytest.raises(ValueError, match=r"saved without observers \['ma'\]"):
        fine_tune(theta0(), TRAIN, VAL, CFG, seed=1, checkpoint=Checkpointer(path, 2), observers=[MovingAverage(0)])


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none visible to torch)")
def test_cuda_run_with_averages_kept_on_the_cpu_resumes_exactly(tmp_path):
    cfg = CFG.model_copy(update={"device": "cuda", "steps": 16, "lr": 0.3})

    def observers():
        return [MovingAverage(3, device="cpu"), SwadObserver(LossValley(2, 2, 1.2, device="cpu"), every=1)]

    full, full_obs, resumed, resumed_obs = kill_and_resume(tmp_path, cfg, observers)
    for a, b in zip(full_obs, resumed_obs):
        averaged = b.averaged(resumed.final_state)
        assert all(t.device.type == "cuda" for t in averaged.values())  # back with the model for scoring
        assert_same_states(a.averaged(full.final_state), averaged)
    assert full_obs[1].valley.summary() == resumed_obs[1].valley.summary()
