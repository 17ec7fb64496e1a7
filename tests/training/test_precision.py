"""Device and precision in the training loops: explicit cpu, bf16 autocast near fp32, CUDA against CPU.

bf16 autocast only changes forward passes: master weights, AdamW states and the historical
averages stay fp32, so a bf16 run moves the weights almost as an fp32 run does. The tolerance
(10 % of the fp32 update's largest entry) is far above bf16's rounding of these tiny nets and
far below what a wrong precision path (bf16 master weights, a lost update) produces.
"""

import copy

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from dgmerge.config import HamConfig, TrainConfig
from dgmerge.models.classifier import Classifier
from dgmerge.training.finetune import fine_tune
from dgmerge.training.ham import train_ham

SOURCES = ("a", "b", "c")
CFG = TrainConfig(steps=8, batch_size=8, lr=5e-2, weight_decay=0.01, eval_every=4, device="cpu")
HAM = HamConfig(merge_hparams={"trim": 0.2})


def blobs(seed: int, n: int = 40, shift: float = 0.0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 3
    centers = torch.tensor([[3.0, 0.0, 1.0, 0.0], [0.0, 3.0, 0.0, 1.0], [-3.0, -3.0, 1.0, 1.0]])
    return TensorDataset(centers[labels] + 0.7 * torch.randn(n, 4, generator=g) + shift, labels)


TRAIN = {d: blobs(i, shift=0.5 * i) for i, d in enumerate(SOURCES)}
VAL = {d: blobs(10 + i, n=24, shift=0.5 * i) for i, d in enumerate(SOURCES)}


def theta0() -> Classifier:
    torch.manual_seed(0)
    encoder = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 8))
    head = nn.Linear(8, 3).requires_grad_(False)
    return Classifier(encoder, head)


def assert_update_close(start: dict, fp32: dict, other: dict, share: float = 0.1) -> None:
    """‖θ_other − θ_fp32‖ ≤ share · ‖θ_fp32 − θ0‖ over all float tensors, and every tensor stays fp32.

    A norm, not a max: AdamW moves an entry by about lr whatever its gradient's size, so an
    entry whose tiny gradient changes sign under bf16 rounding moves the other way by lr.
    """
    keys = [k for k in fp32 if fp32[k].is_floating_point()]
    for key in keys:
        assert other[key].dtype == fp32[key].dtype == torch.float32, key  # master weights stay fp32
    update = torch.cat([(fp32[k] - start[k]).flatten() for k in keys]).norm()
    gap = torch.cat([(other[k] - fp32[k]).flatten() for k in keys]).norm()
    assert gap <= share * update, f"{gap:.4g} > {share} × {update:.4g}"


def test_explicit_cpu_device_trains_and_returns_cpu_states():
    result = fine_tune(theta0(), TRAIN, VAL, CFG, seed=0)
    assert all(t.device.type == "cpu" for t in result.final_state.values())
    assert result.best_val_acc > 0.6


def test_bf16_fine_tune_lands_near_fp32():
    start = theta0().state_dict()
    fp32 = fine_tune(theta0(), TRAIN, VAL, CFG, seed=0)
    bf16 = fine_tune(theta0(), TRAIN, VAL, CFG.model_copy(update={"precision": "bf16"}), seed=0)
    assert_update_close(start, fp32.final_state, bf16.final_state)
    assert abs(bf16.best_val_acc - fp32.best_val_acc) <= 0.1


def test_bf16_ham_lands_near_fp32_with_fp32_averages():
    start = theta0().state_dict()
    fp32 = train_ham(theta0(), TRAIN, VAL, CFG, HAM, seed=0)
    bf16 = train_ham(theta0(), TRAIN, VAL, CFG.model_copy(update={"precision": "bf16"}), HAM, seed=0)
    for source in SOURCES:
        assert_update_close(start, fp32.final_states[source], bf16.final_states[source])
        assert_update_close(start, fp32.historical_states[source], bf16.historical_states[source])
    assert_update_close(start, fp32.merged_state, bf16.merged_state)
    # SAE still borrows and OPA still measures conflicts under autocast.
    assert sum(r["borrowed"] for r in bf16.history) > 0
    assert all(0.0 <= r["sign_conflict"] <= 1.0 for r in bf16.history)


def test_histories_on_the_cpu_give_the_same_run():
    same = train_ham(theta0(), TRAIN, VAL, CFG, HAM, seed=0)
    cpu = train_ham(theta0(), TRAIN, VAL, CFG.model_copy(update={"history_device": "cpu"}), HAM, seed=0)
    for source in SOURCES:
        for key, value in same.historical_states[source].items():
            assert torch.equal(value, cpu.historical_states[source][key]), key


def test_fp16_on_the_cpu_is_refused_before_training():
    with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
        fine_tune(theta0(), TRAIN, VAL, CFG.model_copy(update={"precision": "fp16"}), seed=0)


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none visible to torch)")


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_cuda_fine_tune_matches_cpu(precision):
    start = theta0().state_dict()
    cpu = fine_tune(theta0(), TRAIN, VAL, CFG, seed=0)
    gpu = fine_tune(theta0(), TRAIN, VAL, CFG.model_copy(update={"device": "cuda", "precision": precision}), seed=0)
    assert all(t.device.type == "cuda" for t in gpu.final_state.values())
    assert_update_close(start, cpu.final_state, {k: v.cpu() for k, v in gpu.final_state.items()})


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("history_device", ["same", "cpu"])
def test_cuda_ham_matches_cpu(precision, history_device):
    start = theta0().state_dict()
    cpu = train_ham(theta0(), TRAIN, VAL, CFG, HAM, seed=0)
    cfg = CFG.model_copy(update={"device": "cuda", "precision": precision, "history_device": history_device})
    gpu = train_ham(theta0(), TRAIN, VAL, cfg, HAM, seed=0)
    merged = {k: v.cpu() for k, v in gpu.merged_state.items()}
    assert next(iter(gpu.merged_state.values())).device.type == "cuda"
    assert_update_close(start, cpu.merged_state, merged)


@pytest.mark.cuda
@cuda
def test_cuda_resume_from_a_checkpoint_saved_on_the_gpu(tmp_path):
    from dgmerge.training.checkpoint import Checkpointer
    cfg = CFG.model_copy(update={"device": "cuda"})
    full = train_ham(theta0(), TRAIN, VAL, cfg, HAM, seed=0)
    path = tmp_path / "ham.pt"
    half = cfg.model_copy(update={"steps": 8})
    Checkpointer(path, 4)  # the run below saves at step 4, then is resumed from it

    class Stop(Exception):
        pass

    class StopAfterSave(Checkpointer):
        def save(self, payload):
            super().save(payload)
            raise Stop

    with pytest.raises(Stop):
        train_ham(theta0(), TRAIN, VAL, half, HAM, seed=0, checkpoint=StopAfterSave(path, 4))
    resumed = train_ham(copy.deepcopy(theta0()), TRAIN, VAL, half, HAM, seed=0, checkpoint=Checkpointer(path, 4))
    for key, value in full.merged_state.items():
        torch.testing.assert_close(resumed.merged_state[key], value)


def test_both_loops_write_the_promised_tensorboard_scalars(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    train_ham(theta0(), TRAIN, VAL, CFG, HAM, seed=0, log_dir=tmp_path / "ham")
    fine_tune(theta0(), TRAIN, VAL, CFG, seed=0, log_dir=tmp_path / "erm")
    ham = EventAccumulator(str(tmp_path / "ham")).Reload().Tags()["scalars"]
    erm = EventAccumulator(str(tmp_path / "erm")).Reload().Tags()["scalars"]
    assert {"loss", "lr", "borrowed", "sign_conflict", "val_acc/a", "borrowed/b"} <= set(ham)
    assert {"loss", "lr", "val_acc", "loss/a"} <= set(erm)
    steps = [e.step for e in EventAccumulator(str(tmp_path / "ham")).Reload().Scalars("loss")]
    assert steps == list(range(1, CFG.steps + 1))


def test_progress_lines_come_from_the_training_loop_when_stderr_is_not_a_terminal(capsys, monkeypatch):
    monkeypatch.delenv("DGMERGE_QUIET", raising=False)
    monkeypatch.setattr("sys.stderr.isatty", lambda: False, raising=False)
    train_ham(theta0(), TRAIN, VAL, CFG.model_copy(update={"log_every_s": 0.0}), HAM, seed=0, desc="ham test")
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("ham test: step")]
    assert len(lines) == CFG.steps and "loss" in lines[-1] and "images/s" in lines[0]
