"""Killing a run after a checkpoint and resuming it gives the weights of an uninterrupted run."""

import copy
import re

import pytest
import torch
from torch.utils.data import TensorDataset

from dgmerge.config import HamConfig, TrainConfig
from dgmerge.training.batches import BatchStream
from dgmerge.training.checkpoint import Checkpointer
from dgmerge.training.finetune import fine_tune
from dgmerge.training.ham import train_ham

from .kill import Killed, KillAfterSave, domain, theta0




TRAIN = dict(train={"a": domain(0), "b": domain(1, shift=0.5)}, val={"a": domain(2), "b": domain(3)})
CFG = TrainConfig(steps=9, batch_size=6, lr=2e-2, weight_decay=0.1, eval_every=3)


def assert_same_states(a, b):
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)


def test_batch_stream_resumes_mid_pass():
    data = TensorDataset(torch.arange(10).float(), torch.arange(10))
    first = BatchStream(data, 3, seed=5)
    for _ in range(4):
        next(first)
    state = first.state_dict()
    expected = [next(first)[1].tolist() for _ in range(5)]
    second = BatchStream(data, 3, seed=5)
    second.load_state_dict(state)
    assert [next(second)[1].tolist() for _ in range(5)] == expected


def test_fine_tune_resume_equals_uninterrupted(tmp_path):
    full = fine_tune(theta0(), TRAIN["train"], TRAIN["val"], CFG, seed=1)
    path = tmp_path / "erm.ckpt"
    with pytest.raises(Killed):
        fine_tune(theta0(), TRAIN["train"], TRAIN["val"], CFG, seed=1, checkpoint=KillAfterSave(path, 2, 4))
    assert path.is_file()
    resumed = fine_tune(theta0(), TRAIN["train"], TRAIN["val"], CFG, seed=1, checkpoint=Checkpointer(path, 2))
    assert_same_states(full.final_state, resumed.final_state)
    assert_same_states(full.best_state, resumed.best_state)
    assert full.best_step == resumed.best_step
    assert [h["loss"] for h in full.history] == [h["loss"] for h in resumed.history]
    assert not path.exists()  # a finished run leaves no checkpoint behind


@pytest.mark.parametrize("historical", ["beta", "ema", "none"])
def test_ham_resume_equals_uninterrupted(tmp_path, historical):
    ham = HamConfig(historical=historical, merge_method="rhm", merge_hparams={"trim": 0.2})
    model = theta0()
    model.encoder.requires_grad_(True)
    full = train_ham(copy.deepcopy(model), TRAIN["train"], TRAIN["val"], CFG, ham, seed=2)
    path = tmp_path / "ham.ckpt"
    with pytest.raises(Killed):
        train_ham(copy.deepcopy(model), TRAIN["train"], TRAIN["val"], CFG, ham, seed=2,
                  checkpoint=KillAfterSave(path, 3, 6))
    resumed = train_ham(copy.deepcopy(model), TRAIN["train"], TRAIN["val"], CFG, ham, seed=2,
                        checkpoint=Checkpointer(path, 3))
    assert_same_states(full.merged_state, resumed.merged_state)
    for source in ("a", "b"):
        assert_same_states(full.final_states[source], resumed.final_states[source])
    assert [h["sign_conflict"] for h in full.history] == [h["sign_conflict"] for h in resumed.history]


def _fine_tune(checkpoint):
    return fine_tune(theta0(), TRAIN["train"], TRAIN["val"], CFG, seed=1, checkpoint=checkpoint)


def _train_ham(checkpoint):
    ham = HamConfig(historical="beta", merge_method="rhm", merge_hparams={"trim": 0.2})
    return train_ham(theta0(), TRAIN["train"], TRAIN["val"], CFG, ham, seed=2, checkpoint=checkpoint)


@pytest.mark.parametrize("train", [_fine_tune, _train_ham])
def test_a_resumed_run_reports_the_time_of_every_process_that_trained_it(tmp_path, train):
    # A benchmark sums its compute from these times: a resume must not drop the earlier part.
    path = tmp_path / "run.ckpt"
    with pytest.raises(Killed):
        train(KillAfterSave(path, 3, 6))
    payload = torch.load(path, weights_only=True)
    assert payload["wall_time_s"] > 0
    payload["wall_time_s"] = 1000.0  # as if the killed process had trained for 1000 s
    torch.save(payload, path)
    resumed = train(Checkpointer(path, 3))
    fresh = train(Checkpointer(None))
    assert 1000.0 < resumed.wall_time_s < 1000.0 + 10 * fresh.wall_time_s + 5
    assert fresh.wall_time_s < 1000.0


def test_a_checkpoint_from_before_wall_times_were_saved_counts_as_no_earlier_time(tmp_path):
    path = tmp_path / "old.ckpt"
    with pytest.raises(Killed):
        _fine_tune(KillAfterSave(path, 3, 6))
    payload = torch.load(path, weights_only=True)
    del payload["wall_time_s"]
    torch.save(payload, path)
    checkpoint = Checkpointer(path, 3)
    resumed = _fine_tune(checkpoint)
    assert checkpoint.earlier_s == 0.0
    assert 0.0 < resumed.wall_time_s < 1000.0


def test_corrupt_checkpoint_names_the_file(tmp_path):
    path = tmp_path / "bad.ckpt"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="bad.ckpt"):
        fine_tune(theta0(), TRAIN["train"], TRAIN["val"], CFG, seed=1, checkpoint=Checkpointer(path, 2))


class FallingValidation:
    """Validation accuracy that falls after the first evaluation (0.9, 0.5, 0.4, ...) per model.

    Scripted by evaluation count per val-set call site, so a killed run and its resumed
    continuation see the same sequence as one uninterrupted run.
    """

    def __init__(self, per_call: int = 1):
        self.calls = 0
        self.per_call = per_call  # HAM evaluates every source model at each evaluation step

    def __call__(self, model, val_sets, batch_size, precision="fp32"):
        script = [0.9, 0.5, 0.4, 0.3]
        acc = script[min(self.calls // self.per_call, len(script) - 1)]
        self.calls += 1
        return {name: acc for name in val_sets}


def test_fine_tune_resume_keeps_the_best_checkpoint_from_before_the_kill(tmp_path, monkeypatch):
    from dgmerge.training import finetune as finetune_module

    monkeypatch.setattr(finetune_module, "validation_accuracy", FallingValidation())
    full = fine_tune(theta0(), TRAIN["train"], TRAIN["val"], CFG, seed=1)
    assert (full.best_step, full.best_val_acc) == (3, 0.9)
    path = tmp_path / "erm.ckpt"
    monkeypatch.setattr(finetune_module, "validation_accuracy", FallingValidation())
    with pytest.raises(Killed):
        fine_tune(theta0(), TRAIN["train"], TRAIN["val"], CFG, seed=1, checkpoint=KillAfterSave(path, 3, 6))
    resumed = fine_tune(theta0(), TRAIN["train"], TRAIN["val"], CFG, seed=1, checkpoint=Checkpointer(path, 3))
    # Accuracy fell after the checkpoint: the best state must come back from it, not restart.
    assert (resumed.best_step, resumed.best_val_acc) == (3, 0.9)
    assert_same_states(full.best_state, resumed.best_state)


def test_ham_resume_keeps_each_sources_best_checkpoint_from_before_the_kill(tmp_path, monkeypatch):
    from dgmerge.training import ham as ham_module

    ham = HamConfig(historical="none")
    model = theta0()
    model.encoder.requires_grad_(True)
    monkeypatch.setattr(ham_module, "validation_accuracy", FallingValidation(per_call=2))
    full = train_ham(copy.deepcopy(model), TRAIN["train"], TRAIN["val"], CFG, ham, seed=2)
    assert full.best_steps == {"a": 3, "b": 3}
    path = tmp_path / "ham.ckpt"
    monkeypatch.setattr(ham_module, "validation_accuracy", FallingValidation(per_call=2))
    with pytest.raises(Killed):
        train_ham(copy.deepcopy(model), TRAIN["train"], TRAIN["val"], CFG, ham, seed=2,
                  checkpoint=KillAfterSave(path, 3, 6))
    resumed = train_ham(copy.deepcopy(model), TRAIN["train"], TRAIN["val"], CFG, ham, seed=2,
                        checkpoint=Checkpointer(path, 3))
    assert resumed.best_steps == {"a": 3, "b": 3} and resumed.best_val_accs == {"a": 0.9, "b": 0.9}
    assert_same_states(full.merged_state, resumed.merged_state)  # the merge of the step-3 checkpoints


def test_a_checkpoint_carries_the_cuda_generators_and_restores_them_on_as_many_gpus(tmp_path, monkeypatch):
    """Dropout on a GPU draws from one generator per device: a checkpoint saves them all and a
    resume on as many GPUs restores them (faked here, so the CPU suite sees it), or leaves them."""
    states = [torch.tensor([1, 2, 3], dtype=torch.uint8), torch.tensor([4, 5], dtype=torch.uint8)]
    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: states)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", restored.append)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    checkpointer = Checkpointer(tmp_path / "run.pt", every=1)
    checkpointer.save({"step": 1})
    saved = torch.load(tmp_path / "run.pt", weights_only=True)
    assert [s.tolist() for s in saved["cuda_rng"]] == [[1, 2, 3], [4, 5]]
    assert checkpointer.load()["step"] == 1
    assert [[s.tolist() for s in r] for r in restored] == [[[1, 2, 3], [4, 5]]]
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)  # another machine: keep its own generators
    checkpointer.load()
    assert len(restored) == 1


def test_a_checkpointer_without_a_path_or_an_interval_saves_nothing(tmp_path):
    assert not Checkpointer(None, every=5).enabled and Checkpointer(None, every=5).path is None
    assert not Checkpointer(tmp_path / "c.pt").enabled  # no interval given: off
    on = Checkpointer(str(tmp_path / "c.pt"), every=5)
    assert on.enabled and on.path == tmp_path / "c.pt"


def test_a_cpu_checkpoint_resumes_on_a_gpu_machine(tmp_path, monkeypatch):
    """Saved where there was no GPU (no CUDA generators in it), loaded where there is one: the
    GPU's generators are left as they are."""
    checkpointer = Checkpointer(tmp_path / "run.pt", every=1)
    checkpointer.save({"step": 1})
    assert torch.load(tmp_path / "run.pt", weights_only=True).get("cuda_rng") is None
    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", restored.append)
    assert checkpointer.load()["step"] == 1 and restored == []


class Payload:
    """Not a tensor, number or container: unpickling it would run arbitrary code."""


def test_a_checkpoint_holding_arbitrary_objects_is_refused_not_unpickled(tmp_path):
    path = tmp_path / "run.pt"
    torch.save({"step": 1, "rng": torch.get_rng_state(), "extra": Payload()}, path)
    with pytest.raises(ValueError, match=f"^cannot resume from {re.escape(str(path))}: .*Weights only load failed"):
        Checkpointer(path, every=1).load()
