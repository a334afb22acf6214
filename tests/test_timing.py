"""The per-phase timer (mertlab.toolkit.timing) and its MLflow metrics (mertlab.experiment.phase_times)."""

from __future__ import annotations

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mertlab.experiment import metric_names as M
from mertlab.experiment.phase_times import phase_time_metrics
from mertlab.toolkit.timing import PhaseTimer


def busy(seconds: float) -> None:
    """Spin (CPU time grows with wall time)."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def test_nested_phases_pause_the_enclosing_one():
    timer = PhaseTimer()
    with timer.phase("training"):
        busy(0.05)
        with timer.phase("validation"):
            busy(0.10)
        busy(0.05)
    rows = dict(timer.rows())
    assert list(rows) == ["training", "validation", "other", "total"]
    assert 0.09 <= rows["training"].wall_s < 0.15  # its own 0.1 s, not validation's
    assert 0.09 <= rows["validation"].wall_s < 0.15
    for phase in ("training", "validation"):  # spinning uses CPU (less than wall time on a busy machine)
        assert 0 < rows[phase].cpu_s <= rows[phase].wall_s + 0.01
    assert rows["total"].wall_s == pytest.approx(sum(rows[p].wall_s for p in ("training", "validation", "other")))


def test_a_phase_repeated_accumulates_and_sleep_is_wall_not_cpu():
    timer = PhaseTimer()
    for _ in range(3):
        with timer.phase("probe_fits"):
            time.sleep(0.02)
    (name, spent), *_ = timer.rows()
    assert name == "probe_fits" and spent.wall_s >= 0.06 and spent.cpu_s < 0.03


def test_an_exception_closes_the_phases_it_left_open():
    timer = PhaseTimer()
    with pytest.raises(ValueError), timer.phase("training"):
        timer.start("validation")  # a callback's phase, never stopped: the run failed inside it
        raise ValueError("step failed")
    with timer.phase("probe_features"):
        pass
    assert [name for name, _ in timer.rows()] == ["training", "validation", "probe_features", "other", "total"]
    with pytest.raises(RuntimeError, match="'training', which is not open"):
        timer.stop("training")


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("abc"), st.booleans()), max_size=12))
def test_phases_add_up_to_the_total(steps):
    """Whatever the nesting, each second is counted once: phases + other == total."""
    timer = PhaseTimer()
    opened: list[str] = []
    for name, nest in steps:
        if nest or not opened:
            timer.start(name)
            opened.append(name)
        else:
            timer.stop(opened.pop())
    rows = timer.rows()
    total = rows[-1][1]
    assert sum(t.wall_s for _, t in rows[:-1]) == pytest.approx(total.wall_s, abs=1e-6)
    assert sum(t.cpu_s for _, t in rows[:-1]) == pytest.approx(total.cpu_s, abs=1e-6)


def test_metrics_and_table_name_every_phase():
    timer = PhaseTimer()
    with timer.phase(M.PHASE_TRAINING):
        busy(0.01)
    metrics = phase_time_metrics(timer)
    assert set(metrics) == {
        "time/training_s",
        "time/training_cpu_s",
        "time/other_s",
        "time/other_cpu_s",
        "time/total_s",
        "time/total_cpu_s",
    }
    assert metrics["time/training_s"] <= metrics["time/total_s"]
    table = timer.table().splitlines()
    assert table[0].split() == ["phase", "wall", "s", "share", "CPU", "s"]
    assert [line.split()[0] for line in table[1:]] == ["training", "other", "total"]
