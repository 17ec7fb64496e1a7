import re

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from dgmerge.config import ProbeConfig, TrainConfig
from dgmerge.models.classifier import Classifier
from dgmerge.training.batches import BatchStream
from dgmerge.training.checkpoint import Checkpointer
from dgmerge.training.finetune import fine_tune
from dgmerge.training.observers import MovingAverage
from dgmerge.training.probe import fit_linear_probe

from .kill import Killed, KillAfterSave, domain, theta0


def blobs(seed: int, n: int = 60, shift: float = 0.0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 3
    centers = torch.tensor([[3.0, 0.0], [0.0, 3.0], [-3.0, -3.0]])
    x = centers[labels] + 0.5 * torch.randn(n, 2, generator=g) + shift
    return TensorDataset(x, labels)


def model(seed: int = 0) -> Classifier:
    torch.manual_seed(seed)
    head = nn.Linear(4, 3)
    head.requires_grad_(False)
    return Classifier(nn.Sequential(nn.Linear(2, 4), nn.BatchNorm1d(4)), head)


def test_batch_stream_is_seeded_and_endless():
    data = TensorDataset(torch.arange(10).float(), torch.arange(10))
    first, second = BatchStream(data, 4, seed=3), BatchStream(data, 4, seed=3)
    draws = [next(first)[1].tolist() for _ in range(7)]  # several passes of 2 full batches
    assert draws == [next(second)[1].tolist() for _ in range(7)]
    assert all(len(d) == 4 for d in draws)
    # Within one pass no item repeats (sampling without replacement).
    assert len(set(draws[0] + draws[1])) == 8
    other = BatchStream(data, 4, seed=4)
    assert [next(other)[1].tolist() for _ in range(7)] != draws


def test_fine_tune_learns_selects_best_and_logs_per_domain_losses():
    m = model()
    cfg = TrainConfig(steps=60, batch_size=8, lr=5e-2, weight_decay=0.0, eval_every=20)
    result = fine_tune(m, {"a": blobs(0), "b": blobs(1, shift=0.5)}, {"a": blobs(2), "b": blobs(3)}, cfg, seed=0)
    assert [h["step"] for h in result.history] == list(range(1, 61))
    evaluated = [h for h in result.history if "val_acc" in h]
    assert [h["step"] for h in evaluated] == [20, 40, 60]
    assert result.best_val_acc == max(h["val_acc"] for h in evaluated)
    assert result.best_val_acc > 0.9
    assert {"loss/a", "loss/b"} <= set(result.history[0])
    assert result.history[-1]["loss"] < result.history[0]["loss"]


def test_frozen_head_and_batchnorm_stats_do_not_move():
    m = model()
    head_before = m.head.weight.clone()
    bn_before = m.encoder[1].running_mean.clone()
    fine_tune(m, {"a": blobs(0)}, {"a": blobs(2)}, TrainConfig(steps=5, batch_size=8, lr=1e-2, eval_every=5), seed=0)
    assert torch.equal(m.head.weight, head_before)
    assert torch.equal(m.encoder[1].running_mean, bn_before)


def test_same_seed_same_weights_different_seed_different():
    cfg = TrainConfig(steps=10, batch_size=8, lr=1e-2, eval_every=10)
    runs = []
    for seed in (0, 0, 1):
        m = model()
        runs.append(fine_tune(m, {"a": blobs(0)}, {"a": blobs(2)}, cfg, seed=seed).final_state)
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])
    assert not all(torch.equal(runs[0][k], runs[2][k]) for k in runs[0])


def test_linear_probe_fits_separable_features_and_is_frozen():
    data = blobs(0, n=90)
    head = fit_linear_probe(data.tensors[0], data.tensors[1], 3, ProbeConfig(epochs=40, lr=5e-2, batch_size=16), 0)
    test = blobs(5, n=90)
    acc = (head(test.tensors[0]).argmax(1) == test.tensors[1]).float().mean().item()
    assert acc > 0.95
    assert not any(p.requires_grad for p in head.parameters())
    again = fit_linear_probe(data.tensors[0], data.tensors[1], 3, ProbeConfig(epochs=40, lr=5e-2, batch_size=16), 0)
    assert torch.equal(head.weight, again.weight)


def test_resuming_a_checkpoint_saved_without_the_runs_observers_says_what_to_do(tmp_path):
    """The refusal names the file and the missing observers and tells the user how to proceed
    (the whole message, so a garbled or re-cased advice is caught)."""
    path = tmp_path / "erm.ckpt"
    cfg = TrainConfig(steps=6, batch_size=6, lr=2e-2, eval_every=3)
    train, val = {"a": domain(0)}, {"a": domain(2)}
    with pytest.raises(Killed):
        fine_tune(theta0(), train, val, cfg, seed=1, checkpoint=KillAfterSave(path, 2, 4))
    expected = (f"cannot resume from {path}: it was saved without observers ['ma'] (the methods changed since); "
                "delete it to start this run afresh")
    with pytest.raises(ValueError, match=f"^{re.escape(expected)}$"):
        fine_tune(theta0(), train, val, cfg, seed=1, checkpoint=Checkpointer(path, 2), observers=[MovingAverage(0)])


def test_restored_observer_states_rejoin_the_runs_device():
    """Checkpoints load on the CPU; each observer gets its state back on the run's device, through
    nested dicts and lists, with plain values untouched. The meta device stands in for a GPU."""
    from dgmerge.training.finetune import _restore_observers

    class Keeper:
        name = "keeper"
        state = None

        def load_state_dict(self, state):
            self.state = state

    saved = {"keeper": {"average": {"w": torch.ones(2)}, "segments": [torch.zeros(3), {"b": torch.ones(1)}],
                        "step": 4, "dtypes": {"w": "float32"}},
             "other": {"ignored": torch.ones(1)}}
    keeper = Keeper()
    _restore_observers([keeper], saved, None, torch.device("meta"))
    state = keeper.state
    assert state["average"]["w"].device.type == "meta" and state["average"]["w"].shape == (2,)
    assert state["segments"][0].device.type == "meta" and state["segments"][1]["b"].device.type == "meta"
    assert state["step"] == 4 and state["dtypes"] == {"w": "float32"}


def test_bad_calls_are_refused_with_the_whole_reason():
    with pytest.raises(ValueError, match="^fine_tune needs at least one training domain$"):
        fine_tune(model(), {}, {}, TrainConfig(steps=1), seed=0)
    frozen = model()
    frozen.requires_grad_(False)
    with pytest.raises(ValueError, match=r"^no trainable parameters: check the `trainable` setting$"):
        fine_tune(frozen, {"a": blobs(0)}, {}, TrainConfig(steps=1), seed=0)
    with pytest.raises(ValueError, match=re.escape("observers need distinct names (their checkpoint keys), "
                                                   "got ['ma', 'ma']")):
        fine_tune(model(), {"a": blobs(0)}, {}, TrainConfig(steps=1), seed=0,
                  observers=[MovingAverage(0), MovingAverage(1)])


def test_defaults_load_batches_in_this_process_and_name_the_run_fine_tune(monkeypatch, capsys):
    from dgmerge.training import finetune as finetune_module

    workers = []
    real = finetune_module.BatchStream

    def spy(*args, **kwargs):
        workers.append(kwargs["num_workers"])
        return real(*args, **kwargs)

    monkeypatch.setattr(finetune_module, "BatchStream", spy)
    monkeypatch.delenv("DGMERGE_QUIET", raising=False)
    fine_tune(model(), {"a": blobs(0), "b": blobs(1)}, {}, TrainConfig(steps=2, batch_size=6), seed=0)
    assert workers == [0, 0]
    assert capsys.readouterr().err.startswith("fine-tune: step 2/2 (100%)")
