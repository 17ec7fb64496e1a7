"""SWAD's loss-valley rule on hand-made validation-loss curves, and its observer on a real run."""

from __future__ import annotations

import pytest
import torch

from dgmerge.training.swad import LossValley


def seg(value: float) -> dict[str, torch.Tensor]:
    """A segment average whose tensors name the segment: w = [v, 2v]."""
    return {"w": torch.tensor([value, 2 * value])}


def feed(valley: LossValley, losses: list[float], steps: list[int] | None = None) -> None:
    for i, loss in enumerate(losses):
        valley.update(seg(float(i)), (steps or [10] * len(losses))[i], loss)


def test_convergence_lookback_dead_valley_and_step_weighted_average():
    valley = LossValley(n_converge=3, n_tolerance=6, tolerance_ratio=1.2)
    # Segment 3 is the first minimum of its N_s = 3 window [1.0, 1.1, 1.2], complete at
    # segment 5: converged there, τ = 1.2 × 1.1 = 1.32. Looking back through the last 6
    # segments from segment 3: segment 2 (1.3 ≤ 1.32) opens the window, segment 1 (3.0) does not.
    feed(valley, [5.0, 3.0, 1.3, 1.0, 1.1, 1.2], steps=[10, 10, 10, 10, 10, 20])
    assert valley.converged and valley.converge_step == 40  # segment 3 covers steps 31-40
    assert valley.threshold == pytest.approx(1.32)
    assert valley.window_start == 21 and valley.window_segments == 2  # segments 2 and 3 so far
    # Segment 4 joins when six losses from it on are known (at segment 9): min 1.1 ≤ τ.
    for i, loss in zip(range(6, 10), [1.5, 1.6, 1.4, 1.35]):
        valley.update(seg(float(i)), 10, loss)
    assert valley.window_segments == 3 and valley.window_end == 50 and not valley.dead
    valley.update(seg(10.0), 10, 1.5)  # segment 5 joins: min of segments 5..10 is 1.2
    assert valley.window_segments == 4 and valley.window_end == 70
    valley.update(seg(11.0), 10, 1.7)  # segments 6..11: min 1.35 > 1.32, the valley is dead
    assert valley.dead and valley.done
    valley.update(seg(12.0), 10, 0.1)  # after the valley, nothing joins however low the loss
    assert valley.window_segments == 4
    # Segments 2..5 weighted by their steps (10, 10, 10, 20): (20 + 30 + 40 + 100) / 50 = 3.8.
    torch.testing.assert_close(valley.final_state()["w"], torch.tensor([3.8, 7.6]))
    summary = valley.summary()
    assert summary["window"] == [21, 70] and summary["dead_valley"] and not summary["fallback"]
    assert summary["segment_losses"][-1] == 0.1


def test_the_run_ends_inside_the_valley_with_a_truncated_look_ahead():
    valley = LossValley(3, 6, 1.2)
    # Converges at segment 4 on segment 2 (losses 1.0, 1.1, 1.2): τ = 1.32; segment 1 (2.0) stays out.
    # At the end segments 3..7 are undecided: each joins while the minimum from it to the end is ≤ τ,
    # so segment 6 (1.25) joins and segment 7 (2.0, nothing lower after it) does not.
    feed(valley, [3.0, 2.0, 1.0, 1.1, 1.2, 1.3, 1.25, 2.0])
    assert valley.converge_step == 30 and valley.window_segments == 1
    state = valley.final_state()
    assert not valley.dead and valley.window_segments == 5 and [valley.window_start, valley.window_end] == [21, 70]
    torch.testing.assert_close(state["w"], torch.tensor([4.0, 8.0]))  # mean of 2, 3, 4, 5, 6
    assert valley.final_state()["w"].tolist() == state["w"].tolist()  # closing twice changes nothing
    with pytest.raises(RuntimeError, match="already closed"):
        valley.update(seg(9.0), 10, 1.0)


def test_look_back_stops_at_the_tolerance_queue():
    valley = LossValley(n_converge=2, n_tolerance=3, tolerance_ratio=1.2)
    # Converges at segment 4 on segment 3 ([1.0, 1.1]): τ = 1.26. Segments 2 (1.2) and 1 (1.25)
    # are both under τ, but only the last N_e = 3 segments (2, 3, 4) are in the queue.
    feed(valley, [1.3, 1.25, 1.2, 1.0, 1.1])
    assert valley.converge_step == 40 and valley.threshold == pytest.approx(1.26)
    assert valley.window_start == 21 and valley.window_segments == 2


def test_without_convergence_the_average_runs_from_the_minimum_to_the_end():
    falling = LossValley(3, 6, 1.2)
    feed(falling, [5.0, 4.0, 3.0, 2.0])
    torch.testing.assert_close(falling.final_state()["w"], torch.tensor([3.0, 6.0]))  # the last segment
    assert falling.fallback and not falling.converged
    dipped = LossValley(3, 6, 1.2)
    feed(dipped, [5.0, 4.0, 2.0, 3.0], steps=[10, 10, 10, 30])  # windows [5,4,2], [4,2,3]: no convergence
    torch.testing.assert_close(dipped.final_state()["w"], torch.tensor([2.75, 5.5]))  # (10·2 + 30·3) / 40
    assert dipped.summary()["window"] == [21, 60]


def test_every_segment_after_the_valley_passes_the_threshold_even_with_n_tolerance_below_n_converge():
    valley = LossValley(n_converge=3, n_tolerance=1, tolerance_ratio=1.2)
    # Converges at once on segment 0 (τ = 1.2 × 7.1 / 3 = 2.84); segment 1 (5.0) is over τ on its own,
    # so the valley ends there (the official code would add segment 1 untested).
    feed(valley, [1.0, 5.0, 1.1])
    assert valley.dead and valley.window_segments == 1
    torch.testing.assert_close(valley.final_state()["w"], torch.tensor([0.0, 0.0]))


def test_export_and_restore_continue_the_same_window():
    losses = [5.0, 3.0, 1.3, 1.0, 1.1, 1.2, 1.5, 1.6, 1.4, 1.35, 1.5, 1.1]
    whole = LossValley(3, 6, 1.2)
    feed(whole, losses)
    first = LossValley(3, 6, 1.2)
    feed(first, losses[:7])
    saved = first.export()
    second = LossValley(3, 6, 1.2)
    second.restore(saved)
    for i, loss in enumerate(losses[7:], start=7):
        second.update(seg(float(i)), 10, loss)
    assert second.summary() == whole.summary()
    assert torch.equal(second.final_state()["w"], whole.final_state()["w"])


def test_bad_settings_and_losses_are_refused():
    with pytest.raises(ValueError, match="tolerance_ratio"):
        LossValley(3, 6, 0.3)
    with pytest.raises(ValueError, match="finite"):
        LossValley().update(seg(0.0), 10, float("nan"))
    with pytest.raises(ValueError, match="no segment"):
        LossValley().final_state()
