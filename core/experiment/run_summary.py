"""One stability/loss summary per run, computed from the run's logged metric history.

Training logs it at the end of every run (``summary/*`` metrics, names in
:mod:`mertlab.experiment.metric_names`) so MLflow's own run-comparison view can sort and plot runs by
them; ``mertlab compare`` shows the same numbers (same function), also for unfinished runs.
Values cover the *logged* steps (every ``trainer.log_every_n_steps``; the stability callback's
``every_n_steps`` for attention logits). Counters (spikes, non-finite and skipped steps) are
running totals, so their last logged value is the count.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from mertlab.experiment import metric_names as M


class Point(Protocol):
    """One logged value (``mlflow.entities.Metric`` has these fields)."""

    step: int
    timestamp: int
    value: float


#: summary name -> (source metric, reduction); ``attn/max_logit/*`` is handled as one family.
_REDUCTIONS: dict[str, tuple[str, str]] = {
    M.SUMMARY_FINAL_LOSS: (M.LOSS_TOTAL, "last"),
    M.SUMMARY_BEST_VAL_LOSS: (M.val(M.LOSS_TOTAL), "min"),
    M.SUMMARY_MAX_GRAD_NORM: (M.GRAD_NORM_TOTAL, "max"),
    M.SUMMARY_LOSS_SPIKES: (M.LOSS_SPIKES, "last"),
    M.SUMMARY_NONFINITE_STEPS: (M.NONFINITE_STEPS, "last"),
    M.SUMMARY_SKIPPED_STEPS: (M.SKIPPED_STEPS, "last"),
}
SUMMARY_NAMES: tuple[str, ...] = (*_REDUCTIONS, M.SUMMARY_MAX_ATTN_LOGIT)


def needed_metrics(logged: Sequence[str]) -> list[str]:
    """The logged metric names whose histories :func:`summarize` reads."""
    sources = {source for source, _ in _REDUCTIONS.values()}
    return [k for k in logged if k in sources or k.startswith(M.ATTN_MAX_LOGIT_PREFIX)]


def ordered(points: Sequence[Point]) -> list[Point]:
    """Points by step, then log time (a resumed run may log a step twice: the later one wins)."""
    return sorted(points, key=lambda p: (p.step, p.timestamp))


def reduce_values(points: Sequence[Point], how: str) -> float | None:
    """``last``: the last logged value, non-finite included (a run that ended on NaN losses
    says so); ``min`` / ``max`` of the finite values. None when there is nothing to reduce."""
    points = ordered(points)
    if how == "last":
        return points[-1].value if points else None
    values = [p.value for p in points if math.isfinite(p.value)]
    if not values:
        return None
    return {"min": min(values), "max": max(values)}[how]


def summarize(histories: Mapping[str, Sequence[Point]]) -> dict[str, float]:
    """``summary/*`` values from metric histories; a summary whose source was never logged
    (e.g. no validation, stability callback removed) is left out rather than invented."""
    out: dict[str, float] = {}
    for name, (source, how) in _REDUCTIONS.items():
        value = reduce_values(histories.get(source, ()), how)
        if value is not None:
            out[name] = value
    attn = [p for key, points in histories.items() if key.startswith(M.ATTN_MAX_LOGIT_PREFIX) for p in points]
    value = reduce_values(attn, "max")
    if value is not None:
        out[M.SUMMARY_MAX_ATTN_LOGIT] = value
    return out


def fetch_histories(client: Any, run_id: str, keys: Sequence[str]) -> dict[str, list[Point]]:
    """Full history of each metric in ``keys`` for one run (MLflow client)."""
    return {key: ordered(client.get_metric_history(run_id, key)) for key in keys}


def run_summary(client: Any, run_id: str) -> dict[str, float]:
    """:func:`summarize` of a run stored in MLflow."""
    logged = list(client.get_run(run_id).data.metrics)
    return summarize(fetch_histories(client, run_id, needed_metrics(logged)))


def log_run_summary(client: Any, run_id: str, step: int) -> dict[str, float]:
    """Compute the run's summary and log it as ``summary/*`` metrics at ``step``."""
    from mlflow.entities import Metric

    summary = run_summary(client, run_id)
    now = int(time.time() * 1000)
    if summary:
        client.log_batch(run_id, metrics=[Metric(k, v, now, step) for k, v in summary.items()])
    return summary
