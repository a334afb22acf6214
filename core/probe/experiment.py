"""Probes as part of an experiment: the spec's ``probe:`` section, run on a trained checkpoint.

``mertlab train`` calls :func:`probe_spec_tasks` on its final checkpoint and prints
:func:`results_table` and one :func:`~mertlab.probe.run.verdict` line per task; ``mertlab
sweep`` (through :func:`mertlab.experiment.sweep.run_child`) calls it on every finished child. Scores go to
the checkpoint's MLflow run exactly as ``mertlab probe`` logs them. A task already probed on that
run with the same settings and checkpoint (tag ``probe/<task>/settings``) is skipped, so
re-running a sweep is idempotent.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mertlab.experiment import metric_names
from mertlab.experiment.spec import ProbeSpec
from mertlab.probe.cache import FeatureCache, file_identity
from mertlab.probe.extract import NonFiniteFeaturesError
from mertlab.probe.fit import ProbeParams, ProbeResult
from mertlab.probe.run import (
    ProbeOutcome,
    checkpoint_identity,
    log_probe,
    probe_run,
    run_probe,
    settings_sha,
    verdict,
)
from mertlab.probe.task import load_task
from mertlab.probe.uncertainty import format_p
from mertlab.toolkit.timing import PhaseTimer


@dataclass
class TaskProbe:
    """One task of a ``probe:`` section: its outcome, or ``skipped`` (already probed so)."""

    task: str
    outcome: ProbeOutcome | None
    skipped: bool = False
    #: why the task could not be probed (features of a diverged model), else None
    refused: str | None = None

    @property
    def verdict(self) -> str:
        """``pitch: 71% (random init 9%, best baseline cqt 80%)`` (or that it was skipped or refused)."""
        if self.refused is not None:
            return f"{self.task}: not probed: {self.refused}"
        return verdict(self.outcome) if self.outcome is not None else f"{self.task}: already probed with these settings"


def probe_params(probe: ProbeSpec) -> ProbeParams:
    return ProbeParams(max_epochs=probe.max_epochs, patience=probe.patience, seed=probe.seed)


def task_settings(probe: ProbeSpec, task_path: str, checkpoint: dict[str, Any]) -> dict[str, Any]:
    """Everything a task's scores depend on: the checkpoint's content, the task file, and the
    probe settings (hashed into the ``probe/<task>/settings`` tag)."""
    return {
        "checkpoint": checkpoint,
        "task": file_identity(task_path) if Path(task_path).is_file() else str(Path(task_path).resolve()),
        "layers": probe.layers,
        "window_seconds": probe.window_seconds,
        "baselines": probe.baselines,
        "random_init": probe.random_init,
        "weighted": probe.weighted,
        **({"seeds": probe.seeds} if probe.seeds > 1 else {}),  # one seed: the settings hash of earlier runs
        **probe_params(probe).model_dump(),
    }


def probe_spec_tasks(
    probe: ProbeSpec,
    checkpoint: str | Path,
    run_id: str | None = None,
    tracking_uri: str | None = None,
    progress: bool = True,
    skip_done: bool = True,
    registry: Any = None,
    echo: Callable[[str], None] | None = None,
    timer: PhaseTimer | None = None,
) -> list[TaskProbe]:
    """Probe ``checkpoint`` on every task of ``probe`` and log each to ``run_id`` (default:
    the checkpoint's training run; None and no training run: not logged). With ``skip_done``,
    tasks already logged on that run with equal settings are skipped; a task whose features are
    not finite (a diverged model) is refused, the reason in its verdict. Returns one
    :class:`TaskProbe` per task, in order. ``timer`` counts the probes' phases
    (:func:`~mertlab.probe.run.run_probe`'s, and ``probe_logging``)."""
    echo = echo or (lambda _: None)
    timer = timer or PhaseTimer()
    run_id, tracking_uri, step = probe_run(checkpoint, run_id, tracking_uri)
    client = None
    if run_id:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri)
    identity = checkpoint_identity(checkpoint)
    cache = FeatureCache(probe.cache_dir)
    tasks = [load_task(path) for path in probe.tasks]  # every task file is checked before any work
    results = []
    for path, task in zip(probe.tasks, tasks, strict=True):
        settings = task_settings(probe, path, identity)
        if skip_done and client is not None and run_id:
            done = client.get_run(run_id).data.tags.get(f"probe/{task.name}/settings")
            if done == settings_sha(settings):
                echo(f"probe '{task.name}': already probed with these settings (run {run_id})")
                results.append(TaskProbe(task.name, None, skipped=True))
                continue
        echo(f"probe '{task.name}': {len(task.paths)} clips")
        try:
            outcome = run_probe(
                checkpoint,
                task,
                probe.layers,
                probe.window_seconds,
                probe.batch_size,
                probe_params(probe),
                probe.random_init,
                probe.weighted,
                probe.device,
                progress=progress,
                registry=registry,
                baselines=probe.baselines,
                cache=cache,
                seeds=probe.seeds,
                timer=timer,
            )
        except NonFiniteFeaturesError as exc:  # a diverged model: a verdict, not a failed command
            if client is not None and run_id:
                client.set_tag(run_id, f"probe/{task.name}/refused", str(exc)[:5000])
            results.append(TaskProbe(task.name, None, refused=str(exc)))
            continue
        if run_id:
            with timer.phase(metric_names.PHASE_PROBE_LOGGING):
                log_probe(outcome, run_id, tracking_uri, settings, step)
        results.append(TaskProbe(task.name, outcome))
    return results


def _fmt(value: float | None) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.3f}"


def _with_ci(result: ProbeResult, metric: str) -> str:
    """``0.420 [0.350, 0.490]``: the test score and its 95% bootstrap interval."""
    interval = result.test_ci.get(metric)
    if interval is None or math.isnan(interval.low):
        return _fmt(result.test[metric])
    return f"{_fmt(result.test[metric])} [{interval.low:.3f}, {interval.high:.3f}]"


def results_table(results: list[TaskProbe]) -> tuple[tuple[str, ...], list[tuple[str, ...]]]:
    """One row per probed task (test split, primary metric, each score with its 95% bootstrap
    interval): best probe, best single layer, weighted sum, random init, the strongest baseline,
    the best probe's margin over it, and the paired tests' p-values of the best probe against
    random init and against that baseline."""
    header = (
        "task",
        "metric",
        "best probe",
        "best layer",
        "weighted",
        "random init",
        "strongest baseline",
        "vs baseline",
        "p vs random",
        "p vs baseline",
    )
    rows: list[tuple[str, ...]] = []
    for r in results:
        o = r.outcome
        if o is None:
            continue
        m, best, layer, weighted, strongest = (
            o.metric,
            o.report.best,
            o.best_layer(),
            o.weighted(),
            o.strongest_baseline(),
        )
        p_random = o.p_vs_random()
        rows.append(
            (
                r.task,
                m,
                f"{_with_ci(best, m)} ({best.name})",
                f"{_with_ci(layer, m)} ({layer.name})" if layer else "-",
                _with_ci(weighted, m) if weighted else "-",
                _with_ci(o.random_init.best, m) if o.random_init is not None else "-",
                f"{_with_ci(strongest, m)} ({strongest.name})",
                f"{best.test[m] - strongest.test[m]:+.3f}",
                format_p(p_random).removeprefix("p=") if p_random is not None else "-",
                format_p(o.p_vs_baseline()).removeprefix("p="),
            )
        )
    return header, rows
