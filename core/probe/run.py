"""``mertlab probe``: extract features of a task's audio, fit the probes, report and log to MLflow.

By default the scores go onto the MLflow run that trained the checkpoint (a training checkpoint
holds its ``mlflow_run_id`` and its spec's tracking settings), so ``probe/<task>/<metric>`` sits
next to the pre-training metrics of that run.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError

from mertlab import metric_names
from mertlab.checkpoint import load_backbone
from mertlab.contracts import Backbone
from mertlab.errors import MertlabError
from mertlab.probe.extract import FeatureSet, extract_features, resolve_device, resolve_layers
from mertlab.probe.fit import ProbeParams, ProbeReport, ProbeResult, probe_task
from mertlab.probe.metrics import METRICS
from mertlab.probe.task import Task, load_task
from mertlab.safe_load import is_safetensors, load_torch_file

RANDOM_INIT = "random_init"


@dataclass
class ProbeOutcome:
    """What :func:`run_probe` produced: the trained checkpoint's report and, when asked, the
    same probes on an untrained backbone of the same architecture."""

    report: ProbeReport
    random_init: ProbeReport | None
    features: FeatureSet


def checkpoint_tracking(path: str | Path) -> tuple[str | None, str | None, int]:
    """``(mlflow_run_id, tracking_uri, global_step)`` of a training checkpoint;
    ``(None, None, 0)`` for a backbone file.

    The URI is resolved as training resolved it: the spec's ``tracking.tracking_uri``, else
    ``$MLFLOW_TRACKING_URI``, else ``sqlite:///<cwd>/mlflow.db``.
    """
    from mertlab.spec import ExperimentSpec, TrackingSpec
    from mertlab.tracking import resolve_tracking_uri

    if not Path(path).is_file():
        raise MertlabError(f"{path}: no such checkpoint file")
    if is_safetensors(path):  # a backbone file (save_backbone): no run
        return None, None, 0
    # mmap: the weights are not read (a large checkpoint's optimizer state can be GBs)
    ckpt = load_torch_file(path, "checkpoint", mmap=True)
    run_id = ckpt.get("mlflow_run_id") if isinstance(ckpt, dict) else None
    if not run_id:
        return None, None, 0
    try:
        tracking = TrackingSpec.model_validate(ckpt.get("mertlab_spec", {}).get("tracking", {}))
    except (AttributeError, ValidationError):
        raise MertlabError(f"{path}: the checkpoint's mertlab_spec.tracking is not a valid tracking spec") from None
    # resolve_tracking_uri only reads spec.tracking: no need to re-validate the whole spec.
    uri = resolve_tracking_uri(ExperimentSpec.model_construct(tracking=tracking))
    return str(run_id), uri, int(ckpt.get("global_step", 0))


def default_tracking_uri() -> str:
    """Where runs go when nothing names a store ($MLFLOW_TRACKING_URI or ./mlflow.db)."""
    from mertlab.spec import ExperimentSpec, TrackingSpec
    from mertlab.tracking import resolve_tracking_uri

    return resolve_tracking_uri(ExperimentSpec.model_construct(tracking=TrackingSpec()))


def probe_run(checkpoint: str | Path, run_id: str | None = None, tracking_uri: str | None = None) -> tuple[str | None, str, int]:
    """``(run_id, tracking_uri, step)`` where probe scores go: ``run_id`` or the checkpoint's
    training run, on ``tracking_uri`` or the checkpoint's store, at the checkpoint's training step
    (so probes of several checkpoints of one run form a curve). Checks the run exists (before any
    long work); ``run_id`` is None when there is none (a backbone file and no ``run_id``)."""
    ckpt_run, ckpt_uri, step = checkpoint_tracking(checkpoint)
    run_id = run_id or ckpt_run
    tracking_uri = tracking_uri or ckpt_uri or default_tracking_uri()
    if run_id:
        _client_for_run(run_id, tracking_uri)
    return run_id, tracking_uri, step


def _client_for_run(run_id: str, tracking_uri: str) -> Any:
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    try:
        client.get_run(run_id)
    except MlflowException:
        raise MertlabError(f"MLflow run {run_id} not found at {tracking_uri} (pass --run-id / --tracking-uri, or --no-tracking)") from None
    return client


def random_init_backbone(backbone: Backbone, seed: int = 0, registry: Any = None) -> Backbone:
    """A freshly initialised backbone with ``backbone``'s architecture (same name and params)."""
    if registry is None:
        from mertlab.registry import get_registry

        registry = get_registry()
    torch.manual_seed(seed)
    return registry.build("backbone", backbone.name, backbone.params).eval()


def run_probe(
    checkpoint: str | Path,
    task: str | Path | Task,
    layers: str | list[int] | None = "all",
    window_seconds: float = 5.0,
    batch_size: int = 8,
    params: ProbeParams | None = None,
    random_init: bool = False,
    weighted: bool = True,
    device: str | torch.device = "auto",
    num_workers: int = 0,
    progress: bool = True,
    registry: Any = None,
) -> ProbeOutcome:
    """Probe ``checkpoint`` (a training checkpoint or a ``save_backbone`` file) on ``task``.

    Features of all layers are extracted once (the weighted-sum probe needs them all); per-layer
    probes are fitted on ``layers`` (``all``, ``last``, ``"i,j"``), plus the weighted-sum probe
    unless ``weighted`` is false; ``random_init`` repeats it all on an untrained copy.
    """
    params = params or ProbeParams()
    task = task if isinstance(task, Task) else load_task(task)
    backbone = load_backbone(checkpoint, registry)
    chosen = resolve_layers(layers, backbone.num_layers)
    device = resolve_device(device)

    def report_for(model: Backbone) -> tuple[ProbeReport, FeatureSet]:
        features = extract_features(model, task.paths, window_seconds, None, batch_size, device, num_workers, progress)
        report = probe_task(features.features, features.layers, task, params, probe_layers=chosen, weighted=weighted, device=device)
        return report, features

    report, features = report_for(backbone)
    random_report = None
    if random_init:
        random_report, _ = report_for(random_init_backbone(backbone, params.seed, registry))
    return ProbeOutcome(report, random_report, features)


# --------------------------------------------------------------------------- reporting
def _fmt(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.4f}"


def report_table(outcome: ProbeOutcome) -> tuple[tuple[str, ...], list[tuple[str, ...]]]:
    """Header and rows: one row per probe (valid and test of every metric), the baseline,
    and the random-init probes when present; the best probe (by valid) is starred."""
    report = outcome.report
    metrics = METRICS[report.task.type]
    header = ("probe", *(f"{split} {m}" for m in metrics for split in ("valid", "test")), "epochs")
    rows: list[tuple[str, ...]] = []

    def add(result: ProbeResult, label: str) -> None:
        cells = [_fmt(getattr(result, split)[m]) for m in metrics for split in ("valid", "test")]
        rows.append((label, *cells, str(result.best_epoch) if result.best_epoch else "-"))

    for result in report.probes:
        add(result, result.name + (" *" if result is report.best else ""))
    add(report.baseline, report.baseline.name)
    if outcome.random_init is not None:
        for result in outcome.random_init.probes:
            add(result, f"random-init {result.name}" + (" *" if result is outcome.random_init.best else ""))
    return header, rows


def summary_lines(outcome: ProbeOutcome) -> list[str]:
    """A few lines about the task and the best probe, printed under the table."""
    report, task = outcome.report, outcome.report.task
    sizes = "/".join(str(len(task.indices(s))) for s in ("train", "valid", "test"))
    kind = f"{task.type}{' (auto-detected)' if task.auto_type else ''}"
    classes = f", {len(task.classes)} {'tags' if task.type == 'multilabel' else 'classes'}" if task.classes else ""
    split = "automatic 70/15/15 split" if task.auto_split else "splits from the CSV"
    best = report.best
    lines = [
        f"task '{task.name}': {kind}{classes}; train/valid/test {sizes} ({split})",
        f"best probe (by valid {report.metric}): {best.name}, test {report.metric} {_fmt(best.test[report.metric])} "
        f"(baseline {report.baseline.name}: {_fmt(report.baseline.test[report.metric])})",
    ]
    weighted = next((r for r in report.probes if r.layer_weights), None)
    if weighted is not None:
        lines.append("weighted-sum layer weights: " + ", ".join(f"{w:.2f}" for w in weighted.layer_weights))
    if outcome.random_init is not None:
        rbest = outcome.random_init.best
        lines.append(f"random-init best: {rbest.name}, test {report.metric} {_fmt(rbest.test[report.metric])}")
    return lines


def probe_metrics(outcome: ProbeOutcome) -> dict[str, float]:
    """Everything logged to MLflow (test split; NaN metrics are left out)."""
    report, name = outcome.report, outcome.report.task.name
    metrics: dict[str, float] = {}
    for metric, value in report.best.test.items():
        metrics[metric_names.probe(name, metric)] = value
    for result in (*report.probes, report.baseline):
        for metric, value in result.test.items():
            metrics[metric_names.probe(name, metric, result.name)] = value
    if outcome.random_init is not None:
        for metric, value in outcome.random_init.best.test.items():
            metrics[metric_names.probe(name, metric, RANDOM_INIT)] = value
    return {k: v for k, v in metrics.items() if not math.isnan(v)}


def report_dict(outcome: ProbeOutcome, settings: dict[str, Any]) -> dict[str, Any]:
    """The full report as JSON-able data (logged as an artifact)."""

    def probes(report: ProbeReport) -> list[dict[str, Any]]:
        return [
            {"probe": r.name, "layer": r.layer, "valid": r.valid, "test": r.test, "best_epoch": r.best_epoch,
             "layer_weights": r.layer_weights}
            for r in (*report.probes, report.baseline)
        ]

    task = outcome.report.task
    return {
        "task": {"name": task.name, "type": task.type, "source": str(task.source), "classes": task.classes,
                 "sizes": {s: int(len(task.indices(s))) for s in ("train", "valid", "test")}, "auto_split": task.auto_split},
        "settings": settings,
        "metric": outcome.report.metric,
        "best": outcome.report.best.name,
        "probes": probes(outcome.report),
        "random_init": probes(outcome.random_init) if outcome.random_init is not None else None,
    }


def log_probe(outcome: ProbeOutcome, run_id: str, tracking_uri: str, settings: dict[str, Any] | None = None, step: int = 0) -> None:
    """Log the probe scores onto an existing MLflow run: metrics (see :func:`probe_metrics`) at
    ``step``, the tag ``probe/<task>/best`` and the artifact ``probe/<task>.json``."""
    import time

    from mlflow.entities import Metric

    client = _client_for_run(run_id, tracking_uri)
    name = outcome.report.task.name
    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(k, float(v), now, step) for k, v in sorted(probe_metrics(outcome).items())])
    client.set_tag(run_id, f"probe/{name}/best", outcome.report.best.name)
    client.log_dict(run_id, report_dict(outcome, settings or {}), f"probe/{name}.json")

