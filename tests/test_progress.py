"""Progress reporting: bars on a terminal, timed plain lines in logs, nothing under DGMERGE_QUIET."""

from __future__ import annotations

import io
import sys

import pytest

from dgmerge.progress import StepProgress, format_duration, progress, progress_steps


class FakeClock:
    """A monotonic clock the test moves by hand, so nothing sleeps."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def log_env(monkeypatch):
    """Plain-line mode: stderr not a terminal, no quiet flag, no interval override."""
    monkeypatch.delenv("DGMERGE_QUIET", raising=False)
    monkeypatch.delenv("DGMERGE_LOG_EVERY", raising=False)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False)
    return monkeypatch


def run_loop(log: StepProgress, clock: FakeClock, seconds_per_step: float = 10.0, images: int = 72,
             stop_after: int | None = None) -> list[int]:
    seen = []
    for step in log:
        clock.now += seconds_per_step
        seen.append(step)
        log.update(images=images, loss=1.0 / (step or 1))
        if stop_after is not None and len(seen) == stop_after:
            break
    return seen


def test_lines_come_every_interval_with_step_loss_images_and_eta(log_env):
    clock, out = FakeClock(), io.StringIO()
    log = progress_steps(range(1, 11), desc="ham seed 0 / photo", total=10, every_s=30.0, clock=clock, stream=out)
    assert run_loop(log, clock) == list(range(1, 11))
    lines = out.getvalue().splitlines()
    # Lines at 30 s, 60 s, 90 s (steps 3, 6, 9), then the final line at step 10.
    assert lines == [
        "ham seed 0 / photo: step 3/10 (30%) loss 0.3333 images/s 7.2 elapsed 30s eta 1m10s",
        "ham seed 0 / photo: step 6/10 (60%) loss 0.1667 images/s 7.2 elapsed 1m00s eta 40s",
        "ham seed 0 / photo: step 9/10 (90%) loss 0.1111 images/s 7.2 elapsed 1m30s eta 10s",
        "ham seed 0 / photo: step 10/10 (100%) loss 0.1 images/s 7.2 elapsed 1m40s done",
    ]


def test_images_per_second_is_measured_over_the_interval_since_the_last_line(log_env):
    clock, out = FakeClock(), io.StringIO()
    log = progress_steps(range(4), desc="ft", total=4, every_s=5.0, clock=clock, stream=out)
    for i, _ in enumerate(log):
        clock.now += [1.0, 4.0, 2.0, 8.0][i]
        log.update(images=[100, 100, 50, 50][i], loss=0.5)
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    assert "step 2/4 (50%)" in lines[0] and "images/s 40.0" in lines[0]  # 200 images / 5 s
    assert "step 4/4 (100%)" in lines[1] and "images/s 10.0" in lines[1]  # 100 images / 10 s


def test_every_step_when_every_s_is_zero_and_no_duplicate_final_line(log_env):
    clock, out = FakeClock(), io.StringIO()
    run_loop(progress_steps(range(1, 4), desc="ft", total=3, every_s=0.0, clock=clock, stream=out), clock)
    lines = out.getvalue().splitlines()
    assert [line.split(" (")[0] for line in lines] == ["ft: step 1/3", "ft: step 2/3", "ft: step 3/3"]
    assert lines[-1].endswith(" done")


def test_a_loop_that_stops_early_still_gets_a_final_line(log_env):
    clock, out = FakeClock(), io.StringIO()
    log = progress_steps(range(1, 11), desc="ft", total=10, every_s=600.0, clock=clock, stream=out)
    assert run_loop(log, clock, stop_after=4) == [1, 2, 3, 4]
    assert out.getvalue().splitlines() == ["ft: step 4/10 (40%) loss 0.25 images/s 7.2 elapsed 40s stopped"]
    log.close()  # closing twice writes nothing more
    assert len(out.getvalue().splitlines()) == 1


def test_without_images_the_line_has_no_rate(log_env):
    clock, out = FakeClock(), io.StringIO()
    log = progress_steps(range(2), desc="ft", total=2, every_s=0.0, clock=clock, stream=out)
    run_loop(log, clock, images=0)
    assert "images/s" not in out.getvalue()


def test_lines_go_to_stderr_by_default(log_env, capsys):
    log_env.setattr(sys.stderr, "isatty", lambda: False)
    clock = FakeClock()
    run_loop(progress_steps(range(1, 3), desc="ft", total=2, every_s=0.0, clock=clock), clock)
    assert capsys.readouterr().err.splitlines()[-1].startswith("ft: step 2/2 (100%)")


def test_dgmerge_quiet_prints_nothing(log_env, capsys):
    log_env.setenv("DGMERGE_QUIET", "1")
    for isatty in (False, True):
        log_env.setattr(sys.stderr, "isatty", lambda: isatty)
        clock, out = FakeClock(), io.StringIO()
        log = progress_steps(range(5), desc="ft", total=5, every_s=0.0, clock=clock, stream=out)
        assert run_loop(log, clock) == list(range(5))
        assert out.getvalue() == ""
    assert capsys.readouterr().err == ""


def test_dgmerge_log_every_overrides_every_s(log_env):
    log_env.setenv("DGMERGE_LOG_EVERY", "0")
    clock, out = FakeClock(), io.StringIO()
    run_loop(progress_steps(range(1, 6), desc="ft", total=5, every_s=3600.0, clock=clock, stream=out), clock)
    assert len(out.getvalue().splitlines()) == 5

    log_env.setenv("DGMERGE_LOG_EVERY", "25")
    clock, out = FakeClock(), io.StringIO()
    run_loop(progress_steps(range(1, 6), desc="ft", total=5, every_s=0.0, clock=clock, stream=out), clock)
    assert [line.split(" (")[0] for line in out.getvalue().splitlines()] == ["ft: step 3/5", "ft: step 5/5"]


@pytest.mark.parametrize("value", ["soon", "-1", "nan"])
def test_a_bad_dgmerge_log_every_fails_before_training(log_env, value):
    log_env.setenv("DGMERGE_LOG_EVERY", value)
    with pytest.raises(ValueError, match="DGMERGE_LOG_EVERY"):
        progress_steps(range(3), desc="ft", total=3)


def test_terminal_shows_a_bar_with_scalars_and_yields_every_step(log_env):
    log_env.setattr(sys.stderr, "isatty", lambda: True)
    clock, out = FakeClock(), io.StringIO()
    log = progress_steps(range(1, 8), desc="ft", total=7, every_s=0.0, clock=clock, stream=out)
    assert log.mode == "bar"
    assert run_loop(log, clock, seconds_per_step=1.0) == list(range(1, 8))
    assert out.getvalue() == ""  # no plain lines beside the bar
    assert log._bar is not None and log._bar.n == 7
    assert "loss 0.1429" in log._bar.postfix and "images/s 72.0" in log._bar.postfix


def test_bar_postfix_is_refreshed_at_most_a_few_times_per_second(log_env):
    log_env.setattr(sys.stderr, "isatty", lambda: True)
    clock = FakeClock()
    log = progress_steps(range(1, 101), desc="ft", total=100, clock=clock)
    refreshes = []
    set_postfix_str = log._bar.set_postfix_str
    log._bar.set_postfix_str = lambda s, refresh=True: (refreshes.append(s), set_postfix_str(s, refresh))
    run_loop(log, clock, seconds_per_step=0.01)  # 1 s of steps
    assert 1 <= len(refreshes) <= 4


def test_progress_still_passes_items_through(log_env):
    assert list(progress(range(3), desc="x", total=3)) == [0, 1, 2]
    log_env.setattr(sys.stderr, "isatty", lambda: True)
    assert list(progress(iter("abc"), desc="x")) == ["a", "b", "c"]


@pytest.mark.parametrize("seconds, text", [(0, "0s"), (42.4, "42s"), (62, "1m02s"), (3723, "1h02m03s")])
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


def test_a_resumed_run_shows_the_real_step_and_an_eta_from_its_own_pace(log_env):
    clock, out = FakeClock(), io.StringIO()
    # Steps 1-6 ran before the resume; this run does 7-10 at 10 s a step.
    log = progress_steps(range(7, 11), desc="ft", total=10, every_s=20.0, clock=clock, stream=out)
    assert run_loop(log, clock) == [7, 8, 9, 10]
    assert [line.split(" loss")[0] for line in out.getvalue().splitlines()] == ["ft: step 8/10 (80%)", "ft: step 10/10 (100%)"]
    first, last = out.getvalue().splitlines()
    assert first.endswith("elapsed 20s eta 20s") and last.endswith("elapsed 40s done")


def test_a_resumed_bar_starts_at_the_steps_already_done(log_env):
    log_env.setattr(sys.stderr, "isatty", lambda: True)
    clock = FakeClock()
    log = progress_steps(range(7, 11), desc="ft", total=10, clock=clock)
    assert log._bar.n == 6
    run_loop(log, clock)
    assert log._bar.n == 10


def test_steps_without_a_length_count_from_zero(log_env):
    clock, out = FakeClock(), io.StringIO()
    run_loop(progress_steps(iter(range(5, 8)), desc="ft", total=3, every_s=0.0, clock=clock, stream=out), clock)
    assert out.getvalue().splitlines()[-1].startswith("ft: step 3/3 (100%)")
