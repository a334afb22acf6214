"""A run's per-phase times in MLflow: ``time/<phase>_s`` and ``time/<phase>_cpu_s``.

``mertlab train`` (and each sweep child) counts its phases with one
:class:`~mertlab.toolkit.timing.PhaseTimer` -- data preparation, set-up, target cache, training,
validation, then the probes' feature extraction, fits, baselines and logging -- and logs them
once at the very end, probes included (names in :mod:`mertlab.experiment.metric_names`).
A resumed run logs the times of the process that finished it.
"""

from __future__ import annotations

import logging
import time

from mertlab.experiment import metric_names as M
from mertlab.toolkit.timing import PhaseTimer

log = logging.getLogger(__name__)


def phase_time_metrics(timer: PhaseTimer) -> dict[str, float]:
    """``time/<phase>_s`` (wall) and ``time/<phase>_cpu_s`` of every phase, ``other`` and ``total``."""
    metrics: dict[str, float] = {}
    for phase, spent in timer.rows():
        metrics[M.phase_time(phase)] = round(spent.wall_s, 3)
        metrics[M.phase_cpu_time(phase)] = round(spent.cpu_s, 3)
    return metrics


def log_phase_times(run_id: str, tracking_uri: str, timer: PhaseTimer, step: int = 0) -> dict[str, float]:
    """Log :func:`phase_time_metrics` to ``run_id``; returns them. A store that fails now is a
    warning: the run's results are already logged."""
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    metrics = phase_time_metrics(timer)
    now = int(time.time() * 1000)
    try:
        MlflowClient(tracking_uri).log_batch(
            run_id, metrics=[Metric(k, v, now, step) for k, v in sorted(metrics.items())]
        )
    except Exception as exc:  # noqa: BLE001 - the store failing now must not hide the finished run
        log.warning("MLflow tracking store %s: could not log the phase times (%s)", tracking_uri, exc)
    return metrics
