"""benchmarks/train_speed.py: the stacked (vmap) option trains the same N models as the loop."""

import copy

import pytest
import torch


@pytest.fixture
def one_thread():
    """One intra-op thread: float64 convolutions on two threads beside other busy processes
    stall for minutes on the project VM (oversubscribed OpenMP spin-waits)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_stacked_training_gives_the_weights_of_separate_runs(script, one_thread):
    train_speed = script("train_speed")
    torch.manual_seed(0)
    theta0, cut, size = train_speed.build(last=1)
    data = train_speed.source_data(theta0, cut, size, n=16)
    # float64, where the two computations agree to rounding: in float32, AdamW's first steps
    # (update ≈ lr · sign(g) for tiny g) blow a last-bit difference of a near-zero gradient up
    # to a visible fraction of lr.
    cached = copy.deepcopy(theta0).double()
    # A small dummy image for the frozen prefix (the suffix's output is the same; test_stages).
    cached.cut = train_speed.Cut(block=cut.block, image_size=train_speed.DUMMY_PX)
    caches = [d.tensors[0].double() for d in data.values()]
    labels = [d.tensors[1] for d in data.values()]

    # Both draw the same batches: a fresh _Batches each, seeded alike, drawn in model order.
    loop = train_speed.loop_option("loop", cached, train_speed._Batches(caches, labels, batch=4))
    stacked = train_speed.stacked_option("stacked", cached, train_speed._Batches(caches, labels, batch=4))
    for _ in range(3):
        assert loop.step() == stacked.step() == 3 * 4

    start = {n: p.detach() for n, p in cached.named_parameters() if p.requires_grad}
    separate, together = loop.weights(), stacked.weights()
    assert len(separate) == len(together) == 3
    for mine, theirs in zip(separate, together):
        assert mine.keys() == theirs.keys() == start.keys()
        for name in start:
            torch.testing.assert_close(theirs[name], mine[name], rtol=1e-9, atol=1e-12)
    # The models moved, and apart: each trained on its own source's batches.
    moved = [sum((m[n] - start[n]).norm() ** 2 for n in start) ** 0.5 for m in separate]
    assert min(moved) > 1e-4
    assert (separate[0]["encoder.conv_head.weight"] - separate[1]["encoder.conv_head.weight"]).abs().max() > 1e-6
