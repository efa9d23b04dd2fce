"""The progress watchdog's parts, without a child: how a run's progress is read from its metrics.csv, when
the clock says it stalled, and what the student is told (the whole, as root: test_sandbox.py's hang test)."""
from types import SimpleNamespace

from course import runs
from course.child import Capture, Clock, Outcome
from course.settings import GRADED, LIMITS


def test_the_progress_is_the_iteration_of_the_last_whole_row(tmp_path):
    metrics = tmp_path / GRADED.log_dir / "metrics.csv"
    assert runs._iteration_reached(tmp_path) == 0  # no file yet
    metrics.parent.mkdir(parents=True)
    for text, reached in [("iteration,nelbo,kl,rec\n", 0), ("iteration,nelbo,kl,rec\n50,1,2,3\n", 50),
                          ("iteration,nelbo,kl,rec\n50,1,2,3\n100,1,2,3\n", 100),
                          ("iteration,nelbo,kl,rec\n50,1,2,3\n100,1,2", 50),  # a row half written
                          ("iteration,nelbo,kl,rec\nnonsense\n", 0)]:
        metrics.write_text(text)
        assert runs._iteration_reached(tmp_path) == reached, text
    metrics.write_bytes(b"x" * (LIMITS.max_metrics_bytes + 1))
    assert runs._iteration_reached(tmp_path) == 0  # too large to be read: no progress


def test_the_clock_stops_a_child_whose_progress_stalls_and_says_so():
    steps = iter([0, 50, 100, 100])
    clock = Clock(0.0, timeout=1000, progress=(lambda: next(steps), 60, 120))
    assert clock.look(0.0) and not clock.over(119) and clock.over(120) and clock.stalled(120) == 120
    assert clock.look(1.0) and clock.steps == 50 and not clock.over(60) and clock.over(61)
    assert clock.look(10.0) and clock.steps == 100 and not clock.over(69.9)
    assert clock.look(30.0) and clock.steps == 100 and clock.over(70) and clock.stalled(75) == 65
    assert Clock(0.0, timeout=50, progress=(lambda: 0, 60, 120)).stalled(60) == 0  # its time ran out first


def test_a_stalled_training_is_told_where_it_stopped():
    outcome = Outcome(-9, True, Capture(), Capture(), stalled=61.0, steps=250)
    said = runs._failure(outcome, LIMITS.memory_gb, SimpleNamespace(iter_max=20000, train_seconds=1260))
    assert f"no progress for {LIMITS.progress_seconds:g} s at iteration 250" in said
    before = Outcome(-9, True, Capture(), Capture(), stalled=61.0, steps=0)
    said = runs._failure(before, LIMITS.memory_gb, SimpleNamespace(iter_max=20000, train_seconds=1260))
    assert f"no progress for {LIMITS.startup_seconds:g} s at iteration 0" in said
    timed_out = Outcome(-9, True, Capture(), Capture(), steps=250)
    said = runs._failure(timed_out, LIMITS.memory_gb, SimpleNamespace(iter_max=20000, train_seconds=1260))
    assert "timed out after 1260 s" in said
