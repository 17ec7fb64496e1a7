"""Running an experiment's (part, cell) units from a queue of worker processes."""

import sys

import pytest

from dgmerge.pipeline.parallel import format_cells, parse_cells, run_queue

# Each unit's process appends "start <label>" and "end <label>" to one events file; the events'
# order shows what ran when without timing anything.
SCRIPT = """
import sys, time
events, label, seconds, code = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
open(events, "a").write(f"start {label}\\n")
time.sleep(seconds)
open(events, "a").write(f"end {label}\\n")
sys.exit(code)
"""


def _command(events, seconds=0.6, fail=()):
    def command(unit):
        label = f"{unit[0]}-{unit[1][0]}:{unit[1][1]}"
        return [sys.executable, "-c", SCRIPT, str(events), label, str(seconds), "1" if unit in fail else "0"]
    return command


def _run(tmp_path, units, needs, jobs, **kwargs):
    events = tmp_path / "events.txt"
    events.touch()
    logs = []
    try:
        run_queue(units, needs, _command(events, **kwargs), tmp_path / "logs", jobs, logs.append, poll_s=0.05)
    finally:
        order = events.read_text().split("\n")[:-1]
    return order, logs


def test_a_unit_starts_only_after_what_it_needs_and_jobs_bound_the_parallelism(tmp_path):
    a, b, c = ("main", (0, "x")), ("main", (1, "x")), ("main", (0, "y"))
    order, logs = _run(tmp_path, [a, b, c], lambda u: {a} if u == b else set(), jobs=2)
    # a and c start together (two slots); b, which needs a, only after a ended.
    assert order.index("start main-1:x") > order.index("end main-0:x")
    assert order.index("start main-0:y") < order.index("end main-0:x")
    running = peak = 0
    for event in order:
        running += 1 if event.startswith("start") else -1
        peak = max(peak, running)
    assert peak == 2 and len(order) == 6
    assert (tmp_path / "logs" / "worker0.log").exists() and "worker 1: main 0:y (" in logs[1]


def test_one_job_runs_the_units_in_the_order_given(tmp_path):
    units = [("main", (0, "x")), ("main", (0, "y")), ("ablations", (0, "x"))]
    order, _ = _run(tmp_path, units, lambda u: set(), jobs=1, seconds=0.0)
    assert order == ["start main-0:x", "end main-0:x", "start main-0:y", "end main-0:y",
                     "start ablations-0:x", "end ablations-0:x"]


def test_a_need_outside_the_queue_counts_as_done(tmp_path):
    # The main part of this cell finished in an earlier run: its ablations start at once.
    unit = ("ablations", (0, "x"))
    order, _ = _run(tmp_path, [unit], lambda u: {("main", (0, "x"))}, jobs=2, seconds=0.0)
    assert order == ["start ablations-0:x", "end ablations-0:x"]


def test_a_failed_unit_holds_back_what_needs_it_but_not_the_rest(tmp_path):
    a, b, c = ("main", (0, "x")), ("ablations", (0, "x")), ("main", (0, "y"))
    with pytest.raises(RuntimeError, match=r"main 0:x \(.*worker0\.log\)"):
        _run(tmp_path, [a, b, c], lambda u: {a} if u == b else set(), jobs=1, seconds=0.0, fail={a})
    order = (tmp_path / "events.txt").read_text().split("\n")[:-1]
    assert order == ["start main-0:x", "end main-0:x", "start main-0:y", "end main-0:y"]


def test_needs_that_never_run_are_an_error_not_a_hang(tmp_path):
    a, b = ("main", (0, "x")), ("main", (1, "x"))
    with pytest.raises(RuntimeError, match="never run"):
        _run(tmp_path, [a, b], lambda u: {b} if u == a else {a}, jobs=2)
    with pytest.raises(ValueError, match="jobs"):
        _run(tmp_path, [a], lambda u: set(), jobs=0)


def test_a_stopped_parent_stops_its_workers(tmp_path):
    """SIGTERM to the parent, once its worker is up, ends the run with SystemExit and terminates
    the worker, which would otherwise live on; the caller's SIGTERM handler is restored."""
    import os
    import signal
    import threading
    import time

    events = tmp_path / "events.txt"
    script = "import os, sys, time; open(sys.argv[1], 'a').write(f'{os.getpid()}\\n'); time.sleep(60)"

    def stop_when_the_worker_is_up():
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not (events.exists() and events.read_text().strip()):
            time.sleep(0.02)
        os.kill(os.getpid(), signal.SIGTERM)

    handler = signal.getsignal(signal.SIGTERM)
    threading.Thread(target=stop_when_the_worker_is_up, daemon=True).start()
    started = time.monotonic()
    with pytest.raises(SystemExit):
        run_queue([("main", (0, "x"))], lambda u: set(), lambda u: [sys.executable, "-c", script, str(events)],
                  tmp_path / "logs", 1, lambda _: None, poll_s=0.05)
    assert time.monotonic() - started < 30  # not the worker's 60 s: it was stopped
    assert signal.getsignal(signal.SIGTERM) is handler
    pid = int(events.read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_fewer_units_than_jobs_get_the_spare_cores_as_threads(tmp_path, monkeypatch):
    import os

    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    seen = tmp_path / "threads.txt"
    script = "import os, sys; open(sys.argv[1], 'a').write(os.environ['OMP_NUM_THREADS'] + '\\n')"
    run_queue([("main", (0, "x"))], lambda u: set(), lambda u: [sys.executable, "-c", script, str(seen)],
              tmp_path / "logs", 2, lambda _: None, poll_s=0.05)
    assert seen.read_text() == "4\n"  # one unit, one slot: all 4 cores, not 4 // 2
    seen.unlink()
    run_queue([("main", (0, "x")), ("main", (0, "y"))], lambda u: set(),
              lambda u: [sys.executable, "-c", script, str(seen)], tmp_path / "logs", 2, lambda _: None, poll_s=0.05)
    assert seen.read_text() == "2\n2\n"


def test_cells_round_trip_and_errors():
    cells = [(0, "photo"), (2, "sketch")]
    assert parse_cells(format_cells(cells)) == set(cells)
    for bad in ("photo", "x:photo", "1:"):
        with pytest.raises(ValueError, match="--cells"):
            parse_cells(bad)
