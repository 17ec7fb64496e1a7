"""HAM lockstep trainer on Gaussian blobs: tiny models, a few steps, bit-exact comparisons."""

import math

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from dgmerge.config import TrainConfig
from dgmerge.merging import merge
from dgmerge.models.classifier import Classifier
from dgmerge.training import ham as ham_module
from dgmerge.training.batches import BatchStream
from dgmerge.training.finetune import fine_tune
from dgmerge.training.ham import HamConfig, stream_seed, train_ham
from dgmerge.training.sae import max_confidence

SOURCES = ("a", "b", "c")
CFG = TrainConfig(steps=8, batch_size=8, lr=5e-2, weight_decay=0.01, eval_every=4)


def blobs(seed: int, n: int = 40, shift: float = 0.0, roll: int = 0) -> TensorDataset:
    """Three Gaussian classes; `roll` moves every class to another's centre (a conflicting domain)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 3
    centers = torch.tensor([[3.0, 0.0], [0.0, 3.0], [-3.0, -3.0]])
    x = centers[(labels + roll) % 3] + 0.7 * torch.randn(n, 2, generator=g) + shift
    return TensorDataset(x, labels)


# Source c conflicts with a and b, so the models' updates disagree in sign and OPA has work to do.
TRAIN = {d: blobs(i, shift=0.5 * i, roll=int(d == "c")) for i, d in enumerate(SOURCES)}
VAL = {d: blobs(10 + i, n=30, shift=0.5 * i, roll=int(d == "c")) for i, d in enumerate(SOURCES)}


def theta0() -> Classifier:
    """Linear + BN encoder under a frozen head; BN's weight is frozen too (a frozen encoder tensor)."""
    torch.manual_seed(0)
    head = nn.Linear(4, 3)
    head.requires_grad_(False)
    model = Classifier(nn.Sequential(nn.Linear(2, 4), nn.BatchNorm1d(4)), head)
    model.encoder[1].weight.requires_grad_(False)
    return model


def run(seed: int = 0, cfg: TrainConfig = CFG, train=None, **ham) -> ham_module.HamResult:
    return train_ham(theta0(), train or TRAIN, VAL, cfg, HamConfig(**ham), seed=seed)


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny tensors: a second intra-op thread only adds spin-waits on a shared CPU (10x slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def default_run(one_thread) -> ham_module.HamResult:
    return run()


def test_without_sae_and_opa_each_model_equals_its_single_source_fine_tune():
    result = run(seed=3, sae=False, opa=False, historical="none", merge_method="average")
    for source in SOURCES:
        alone = fine_tune(theta0(), {source: TRAIN[source]}, VAL, CFG, seed=3)
        assert same(result.final_states[source], alone.final_state), source
        assert same(result.best_states[source], alone.best_state), source
        assert result.best_steps[source] == alone.best_step
        assert result.best_val_accs[source] == alone.best_val_acc
        losses = [h[f"loss_ce/{source}"] for h in result.history]
        assert losses == [h[f"loss/{source}"] for h in alone.history]


def test_stream_seeds_follow_fine_tunes_scheme():
    assert [stream_seed(4, j) for j in range(3)] == [4000, 4000, 4000]
    assert [stream_seed(4, j, "erm") for j in range(3)] == [4000, 4001, 4002]
    with pytest.raises(ValueError):
        stream_seed(4, 0, "pooled")


def test_tau_and_borrow_counts_at_step_one_match_a_hand_computation(default_run):
    # At step 1 every model is θ0 and the batches are the first of each seeded stream.
    model = theta0().train()
    batches = {d: next(BatchStream(TRAIN[d], CFG.batch_size, seed=stream_seed(0, j))) for j, d in enumerate(SOURCES)}
    with torch.no_grad():
        conf = {d: max_confidence(model(x)) for d, (x, _) in batches.items()}
    first = default_run.history[0]
    for i in SOURCES:
        tau = conf[i].mean()
        assert first[f"tau/{i}"] == pytest.approx(tau.item())
        for j in SOURCES:
            if j != i:
                assert first[f"borrow/{i}<-{j}"] == int((conf[j] > tau).sum())
        assert first[f"borrowed/{i}"] == sum(first[f"borrow/{i}<-{j}"] for j in SOURCES if j != i)
    assert sum(first[f"borrowed/{i}"] for i in SOURCES) > 0  # the test exercises borrowing


def test_history_logs_flat_scalar_fields_every_step(default_run):
    history = default_run.history
    assert [h["step"] for h in history] == list(range(1, CFG.steps + 1))
    needed = {"sign_conflict", "lr", "hist_weight"}
    for i in SOURCES:
        needed |= {f"tau/{i}", f"loss/{i}", f"loss_ce/{i}", f"loss_sign/{i}", f"borrowed/{i}", f"sign_conflict/{i}"}
        needed |= {f"borrow/{i}<-{j}" for j in SOURCES if j != i}
    for h in history:
        assert needed <= set(h)
        assert all(isinstance(v, (int, float)) for v in h.values())
    evaluated = [h["step"] for h in history if "val_acc/a" in h]
    assert evaluated == [4, 8]
    assert {f"val/{i}/{d}" for i in SOURCES for d in SOURCES} <= set(history[-1])
    assert history[0]["sign_conflict"] == 0.0  # at θ0 every update is zero
    assert any(h["sign_conflict"] > 0 for h in history)
    assert any(h["loss_sign/a"] > 0 for h in history)
    for h in history:
        for i in SOURCES:
            assert h[f"loss/{i}"] == pytest.approx(h[f"loss_ce/{i}"] + 0.1 * h[f"loss_sign/{i}"], rel=1e-5)


def test_merged_state_is_the_merge_of_the_historical_states(default_run):
    r = default_run
    theta = theta0().state_dict()
    keys = r.trainable
    assert "encoder.1.weight" not in keys and "head.weight" not in keys
    expected = merge("rhm", {k: theta[k] for k in keys}, [{k: r.historical_states[s][k] for k in keys} for s in SOURCES])
    assert r.merged_from == "historical"
    for k in theta:
        assert torch.equal(r.merged_state[k], expected[k] if k in keys else theta[k]), k
    assert r.merged_state.info["method"] == "rhm"


def test_merge_scope_all_merges_the_full_state_dicts():
    r = run(sae=False, merge_scope="all", merge_method="ties", merge_hparams={"keep": 0.5})
    expected = merge("ties", theta0().state_dict(), [r.historical_states[s] for s in SOURCES], keep=0.5)
    assert same(dict(r.merged_state), dict(expected))


def test_one_step_historical_average_is_the_midpoint_of_theta0_and_the_model():
    # T = 1: the Beta weights of t = 0 (θ0) and t = 1 sit at x = 1/4 and 3/4, equal for any β.
    r = run(cfg=TrainConfig(steps=1, batch_size=8, lr=5e-2, eval_every=1), beta=0.5)
    theta = theta0().state_dict()
    for s in SOURCES:
        hist, final = r.historical_states[s], r.final_states[s]
        for k in theta:
            if k in r.trainable:
                assert torch.allclose(hist[k], (theta[k] + final[k]) / 2, atol=1e-7), k
            else:
                assert torch.equal(hist[k], theta[k]), k  # frozen tensors stay bit-exact


@pytest.mark.parametrize("beta", [2.0, 0.5])
def test_historical_state_is_the_beta_weighted_mean_of_the_trajectory_by_hand(monkeypatch, beta):
    """Eq. 7 over T = 3 steps with β ≠ 1/2's symmetry broken: the weights are Beta(β, β) densities at
    x_t = (t + 0.5) / (T + 1), t = 0..T (θ0 included), computed here from the formula, not the library."""
    steps, trajectory = 3, {s: [] for s in SOURCES}
    original = ham_module._source_step

    def recording(run_, *args, **kwargs):
        record = original(run_, *args, **kwargs)
        trajectory[run_.name].append({n: p.detach().clone() for n, p in run_.model.named_parameters() if p.requires_grad})
        return record

    monkeypatch.setattr(ham_module, "_source_step", recording)
    r = run(cfg=TrainConfig(steps=steps, batch_size=8, lr=5e-2, eval_every=steps), beta=beta)
    xs = [(t + 0.5) / (steps + 1) for t in range(steps + 1)]
    gammas = [(x * (1 - x)) ** (beta - 1) for x in xs]  # the Beta normaliser cancels
    theta = theta0().state_dict()
    for s in SOURCES:
        states = [{k: theta[k] for k in r.trainable}] + trajectory[s]
        assert len(states) == steps + 1
        for k in r.trainable:
            expected = sum(g * state[k] for g, state in zip(gammas, states)) / sum(gammas)
            assert torch.allclose(r.historical_states[s][k], expected, atol=1e-6), (s, k)
        # The trajectory moved, so another β would give another average: the test sees β.
        other = [(x * (1 - x)) ** (1.0 / beta - 1) for x in xs]
        k = r.trainable[0]
        assert not torch.allclose(sum(g * st[k] for g, st in zip(other, states)) / sum(other),
                                  r.historical_states[s][k], atol=1e-6)


def test_historical_none_merges_the_best_checkpoints_and_ema_is_an_option():
    r = run(historical="none", merge_method="average")
    assert r.historical_states is None and r.merged_from == "best"
    expected = merge("average", {k: theta0().state_dict()[k] for k in r.trainable},
                     [{k: r.best_states[s][k] for k in r.trainable} for s in SOURCES])
    assert all(torch.equal(r.merged_state[k], expected[k]) for k in r.trainable)
    ema = run(historical="ema", ema_decay=0.5)
    assert ema.merged_from == "ema" and "hist_weight" not in ema.history[0]


def test_opa_off_never_builds_the_sign_loss(monkeypatch):
    with_opa = run(sae=False)

    def forbidden(*args, **kwargs):
        raise AssertionError("sign_loss called with opa off")

    monkeypatch.setattr(ham_module.opa, "sign_loss", forbidden)
    without = run(sae=False, opa=False)
    assert all(h[f"loss_sign/{i}"] == 0.0 and h[f"loss/{i}"] == h[f"loss_ce/{i}"]
               for h in without.history for i in SOURCES)
    # The module is live when on: same data and CE, different weights.
    assert not same(with_opa.final_states["a"], without.final_states["a"])


def test_sae_off_forwards_only_the_own_batch_and_logs_zero_borrowing(monkeypatch):
    seen: list[int] = []
    original = Classifier.forward

    def counting(self, inputs):
        if self.training:
            seen.append(len(inputs))
        return original(self, inputs)

    monkeypatch.setattr(Classifier, "forward", counting)
    r = run(sae=False, opa=False)
    assert seen == [CFG.batch_size] * (CFG.steps * len(SOURCES))
    assert all(h[f"borrow/{i}<-{j}"] == 0 for h in r.history for i in SOURCES for j in SOURCES if i != j)


def test_sae_options_warmup_cap_and_margin():
    warm = run(opa=False, sae_warmup_steps=3, sae_max_borrow=1)
    counts = [[h[f"borrow/{i}<-{j}"] for i in SOURCES for j in SOURCES if i != j] for h in warm.history]
    assert all(sum(c) == 0 for c in counts[:3])
    assert sum(map(sum, counts[3:])) > 0
    assert max(map(max, counts)) <= 1
    # Confidences are ≤ 1, so a margin of 1 above τ borrows nothing.
    strict = run(opa=False, sae_rule="margin", sae_margin=1.0)
    assert all(h[f"borrowed/{i}"] == 0 for h in strict.history for i in SOURCES)


def test_same_seed_same_weights_and_update_order_does_not_matter(default_run):
    again = run()
    assert same(dict(default_run.merged_state), dict(again.merged_state))
    assert all(same(default_run.final_states[s], again.final_states[s]) for s in SOURCES)
    other = run(seed=1)
    assert not same(default_run.final_states["a"], other.final_states["a"])
    # v̄ is taken before any model moves, so reversing the update order changes nothing
    # (up to float summation order in the enriched batches).
    reverse = run(train={d: TRAIN[d] for d in reversed(SOURCES)})
    for s in SOURCES:
        for k, v in default_run.final_states[s].items():
            assert torch.allclose(v, reverse.final_states[s][k], atol=1e-5), (s, k)


def test_theta0_is_untouched():
    # (What train_ham refuses, in full, is in test_ham_inputs.py.)
    model = theta0()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train_ham(model, TRAIN, VAL, TrainConfig(steps=1, batch_size=8, eval_every=1), HamConfig(), seed=0)
    assert same(model.state_dict(), before)


def test_given_models_are_trained_in_place_and_match_the_theta0_form(default_run):
    models = [theta0() for _ in SOURCES]
    r = train_ham(models, TRAIN, VAL, CFG, HamConfig(), seed=0)
    assert same(dict(r.merged_state), dict(default_run.merged_state))
    assert all(same(m.state_dict(), r.final_states[s]) for m, s in zip(models, SOURCES))
    assert math.isfinite(r.wall_time_s) and r.wall_time_s > 0


def _one_step_model() -> Classifier:
    """logits = 5·x: a trainable identity encoder under a frozen head scaling by 5."""
    encoder = nn.Linear(2, 2, bias=False)
    head = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        encoder.weight.copy_(torch.eye(2))
        head.weight.copy_(5 * torch.eye(2))
    head.requires_grad_(False)
    return Classifier(encoder, head)


def test_a_borrowed_sample_enters_the_loss_with_its_true_label():
    """One SAE step by hand: which foreign sample is borrowed, with which label, and its weight in L_CE."""
    model = _one_step_model()
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    cfg = HamConfig(opa=False)
    run_a = ham_module.new_source_run("a", model, names, TrainConfig(steps=1, lr=1e-3), cfg)
    own = (torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 1]))  # softmax(5, 0): τ_a = 0.99331
    # b's first sample is more confident than τ_a (softmax(15, 0)) and labelled 1, against the
    # model's argmax 0; the second (softmax(0.5, 0) = 0.62) stays home.
    foreign = (torch.tensor([[3.0, 0.0], [0.1, 0.0]]), torch.tensor([1, 0]))
    theta0 = [p.detach().clone() for p in run_a.params]
    record = ham_module._source_step(run_a, {"a": own, "b": foreign}, theta0, theta0, cfg, step=1)
    assert record["borrow/a<-b"] == 1 and record["borrowed/a"] == 1
    assert record["tau/a"] == pytest.approx(1 / (1 + math.exp(-5)), rel=1e-6)
    own_ce = math.log(1 + math.exp(-5))
    # Mean over the enriched batch B'_a (3 samples); the borrowed one with its true label 1.
    assert record["loss_ce/a"] == pytest.approx((2 * own_ce + math.log(1 + math.exp(15))) / 3, rel=1e-6)


def test_historical_weights_follow_beta_for_every_step():
    """hist_weight at step t is γ_t = Beta(β, β).pdf((t + 0.5) / (T + 1)) for the configured β."""
    from dgmerge.merging.trajectory import beta_weight

    for beta in (2.0, 0.5):
        result = run(cfg=TrainConfig(steps=5, batch_size=8, lr=1e-2, eval_every=5), sae=False, opa=False, beta=beta)
        weights = [r["hist_weight"] for r in result.history]
        assert weights == pytest.approx([beta_weight(t, 5, beta) for t in range(1, 6)], rel=1e-9)
    # β = 2 is bell-shaped: the middle step weighs most; β = 0.5 is U-shaped.
    assert beta_weight(3, 5, 2.0) > beta_weight(1, 5, 2.0) and beta_weight(3, 5, 0.5) < beta_weight(1, 5, 0.5)


def test_a_checkpoint_brings_back_each_models_loss_scale_and_puts_its_best_state_on_its_device(monkeypatch):
    """fp16's loss scaler (enabled here on the CPU; CUDA's fp16 runs use the same state) resumes at
    the saved scale, not at a fresh one, and the best state is sent to the model's device."""
    model = theta0()
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    cfg = TrainConfig(steps=4, batch_size=8)
    saved = ham_module.new_source_run("a", model, names, cfg, HamConfig())
    saved.scaler = torch.amp.GradScaler("cpu", init_scale=8.0)
    saved.best_step, saved.best_acc = 3, 0.75
    resumed = ham_module.new_source_run("a", theta0(), names, cfg, HamConfig())
    resumed.scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    devices = []
    real = ham_module.to_device
    monkeypatch.setattr(ham_module, "to_device", lambda state, device: devices.append(device) or real(state, device))
    ham_module._restore([resumed], {}, {"runs": [ham_module._export(saved)], "streams": {}})
    assert resumed.scaler.get_scale() == 8.0
    assert devices == [resumed.device] and (resumed.best_step, resumed.best_acc) == (3, 0.75)


def test_the_evaluation_cadence_changes_only_the_best_checkpoints():
    """Why ham.eval_every may be sparse on a long budget: what HAM merges does not depend on it."""
    often = run(cfg=CFG.model_copy(update={"eval_every": 1}))
    rarely = run(cfg=CFG.model_copy(update={"eval_every": 8}))
    for source in SOURCES:
        assert same(often.historical_states[source], rarely.historical_states[source])
        assert same(often.final_states[source], rarely.final_states[source])
    assert same(often.merged_state, rarely.merged_state)
    assert [sum("val_acc/a" in r for r in x.history) for x in (often, rarely)] == [8, 1]
