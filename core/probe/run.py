"""``mertlab probe``: extract features of a task's audio, fit the probes, report and log to MLflow.

By default the scores go onto the MLflow run that trained the checkpoint (a training checkpoint
holds its ``mlflow_run_id`` and its spec's tracking settings), so ``probe/<task>/<metric>`` sits
next to the pre-training metrics of that run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import ValidationError

from mertlab.contracts import Backbone
from mertlab.errors import MertlabError
from mertlab.experiment import metric_names
from mertlab.experiment.spec import TrackingSpec, parse_baselines
from mertlab.experiment.tracking import default_tracking_uri, ensure_experiment
from mertlab.plugin_system.registry import get_registry
from mertlab.probe.baselines import baseline_features, cache_identity
from mertlab.probe.cache import FeatureCache, content_hash
from mertlab.probe.extract import FeatureSet, extract_features, resolve_device, resolve_layers
from mertlab.probe.fit import ProbeParams, ProbeReport, ProbeResult, orderable, probe_task
from mertlab.probe.metrics import METRICS
from mertlab.probe.plots import layer_plot
from mertlab.probe.task import Task, load_task
from mertlab.probe.uncertainty import Interval, format_p, paired_p
from mertlab.toolkit.checkpoint import (
    check_hf_directory,
    check_not_sharded,
    hf_directory,
    load_backbone,
    load_checkpoint_file,
)
from mertlab.toolkit.safe_load import is_safetensors
from mertlab.toolkit.timing import PhaseTimer

RANDOM_INIT = "random_init"
WEIGHTED = "weighted"
BEST_LAYER = "best_layer"
BASELINE_PREFIX = "baseline_"


@dataclass(frozen=True)
class SeedSpread:
    """A test score over several probe seeds."""

    values: tuple[float, ...]

    @classmethod
    def of(cls, values: list[float]) -> SeedSpread:
        return cls(tuple(float(v) for v in values))

    @property
    def mean(self) -> float:
        return float(np.mean(self.values))

    @property
    def std(self) -> float:
        """Sample standard deviation (ddof 1)."""
        return float(np.std(self.values, ddof=1)) if len(self.values) > 1 else 0.0


@dataclass
class ProbeOutcome:
    """What :func:`run_probe` produced: the trained checkpoint's report and, when asked, the
    same probes on an untrained backbone of the same architecture and on handcrafted baselines
    (``baselines``: name -> report of its single feature, probe named ``baseline_<name>``)."""

    report: ProbeReport
    random_init: ProbeReport | None
    features: FeatureSet
    baselines: dict[str, ProbeReport] = field(default_factory=dict)
    #: The same probes refitted with further probe seeds (``seeds`` > 1), trained and random init.
    seed_reports: list[ProbeReport] = field(default_factory=list)
    random_seed_reports: list[ProbeReport] = field(default_factory=list)

    @property
    def metric(self) -> str:
        return self.report.metric

    def paired_p(self, other: ProbeResult, metric: str | None = None) -> float:
        """p-value of the paired test of the best probe against ``other`` on the test clips."""
        task, metric = self.report.task, metric or self.metric
        test = task.indices("test")
        return paired_p(task.type, metric, task.targets[test], self.report.best.scores[test], other.scores[test])

    def p_vs_random(self, metric: str | None = None) -> float | None:
        """The best probe against random init's best probe (None without random init)."""
        return None if self.random_init is None else self.paired_p(self.random_init.best, metric)

    def p_vs_baseline(self, metric: str | None = None) -> float:
        """The best probe against the strongest baseline."""
        return self.paired_p(self.strongest_baseline(), metric)

    def seed_spread(self, metric: str | None = None) -> tuple[SeedSpread, SeedSpread | None] | None:
        """Test ``metric`` of the best probe (by valid) over every probe seed, trained and random
        init; None with one seed."""
        if not self.seed_reports:
            return None
        metric = metric or self.metric
        trained = SeedSpread.of([r.best.test[metric] for r in (self.report, *self.seed_reports)])
        random = None
        if self.random_init is not None:
            random = SeedSpread.of([r.best.test[metric] for r in (self.random_init, *self.random_seed_reports)])
        return trained, random

    def baseline_results(self) -> list[ProbeResult]:
        """Majority/chance, then every handcrafted baseline's probe."""
        return [self.report.baseline, *(r.probes[0] for r in self.baselines.values())]

    def strongest_baseline(self) -> ProbeResult:
        """The baseline with the best *valid* primary metric (the test split never selects)."""
        return max(self.baseline_results(), key=lambda r: orderable(r.valid[self.metric]))

    def best_layer(self) -> ProbeResult | None:
        """The best single-layer probe (by valid), the weighted-sum probe left out."""
        layers = [r for r in self.report.probes if r.layer is not None]
        return max(layers, key=lambda r: orderable(r.valid[self.metric])) if layers else None

    def weighted(self) -> ProbeResult | None:
        return next((r for r in self.report.probes if r.name == WEIGHTED), None)


def checkpoint_tracking(path: str | Path) -> tuple[str | None, str | None, int]:
    """``(mlflow_run_id, tracking_uri, global_step)`` of a training checkpoint;
    ``(None, None, 0)`` for a backbone file.

    The URI is resolved as training resolved it: the spec's ``tracking.tracking_uri``, else
    ``$MLFLOW_TRACKING_URI``, else ``sqlite:///<cwd>/mlflow.db``.
    """

    check_not_sharded(path)
    if not Path(path).is_file():
        raise MertlabError(f"{path}: no such checkpoint file")
    if is_safetensors(path):  # a backbone file (save_backbone): no run
        return None, None, 0
    # mmap: the weights are not read (a large checkpoint's optimizer state can be GBs)
    ckpt = load_checkpoint_file(path, mmap=True)
    run_id = ckpt.get("mlflow_run_id") if isinstance(ckpt, dict) else None
    if not run_id:
        return None, None, 0
    try:
        tracking = TrackingSpec.model_validate(ckpt.get("mertlab_spec", {}).get("tracking", {}))
    except (AttributeError, ValidationError):
        raise MertlabError(f"{path}: the checkpoint's mertlab_spec.tracking is not a valid tracking spec") from None
    uri = tracking.tracking_uri or default_tracking_uri()
    return str(run_id), uri, int(ckpt.get("global_step", 0))


#: Experiment of the runs that hold probes of released (``hf:DIR``) checkpoints.
HF_EXPERIMENT = "probes"


def probe_run(
    checkpoint: str | Path, run_id: str | None = None, tracking_uri: str | None = None, experiment: str = HF_EXPERIMENT
) -> tuple[str | None, str, int]:
    """``(run_id, tracking_uri, step)`` where probe scores go: ``run_id`` or the checkpoint's
    training run, on ``tracking_uri`` or the checkpoint's store, at the checkpoint's training step
    (so probes of several checkpoints of one run form a curve). Checks the run exists (before any
    long work); ``run_id`` is None when there is none (a backbone file and no ``run_id``).
    An ``hf:DIR`` checkpoint logs to the run named after the directory in ``experiment``
    (created on first use, reused after)."""
    directory = hf_directory(checkpoint)
    if directory is not None:
        check_hf_directory(directory)
        tracking_uri = tracking_uri or default_tracking_uri()
        if not run_id:
            run_id = named_run(tracking_uri, experiment, directory.resolve().name, {"mertlab.hf_dir": str(directory)})
        _client_for_run(run_id, tracking_uri)
        return run_id, tracking_uri, 0
    ckpt_run, ckpt_uri, step = checkpoint_tracking(checkpoint)
    run_id = run_id or ckpt_run
    tracking_uri = tracking_uri or ckpt_uri or default_tracking_uri()
    if run_id:
        _client_for_run(run_id, tracking_uri)
    return run_id, tracking_uri, step


def named_run(tracking_uri: str, experiment: str, run_name: str, tags: dict[str, str] | None = None) -> str:
    """The newest run called ``run_name`` in ``experiment`` (both created when missing)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    exp_id = ensure_experiment(client, experiment)
    runs = [
        r
        for r in client.search_runs([exp_id], order_by=["attributes.start_time DESC"], max_results=1000)
        if r.info.run_name == run_name
    ]
    if runs:
        return runs[0].info.run_id
    run = client.create_run(exp_id, run_name=run_name, tags=tags or {})
    client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id


def _client_for_run(run_id: str, tracking_uri: str) -> Any:
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    try:
        client.get_run(run_id)
    except MlflowException:
        raise MertlabError(
            f"MLflow run {run_id} not found at {tracking_uri} (pass --run-id / --tracking-uri, or --no-tracking)"
        ) from None
    return client


def random_init_backbone(backbone: Backbone, seed: int = 0, registry: Any = None) -> Backbone:
    """A freshly initialised backbone with ``backbone``'s architecture (same name and params)."""
    if registry is None:
        registry = get_registry()
    torch.manual_seed(seed)
    return registry.build("backbone", backbone.name, backbone.params).eval()


def checkpoint_identity(checkpoint: str | Path) -> dict[str, Any]:
    """Feature-cache identity of a checkpoint: the content hash of its file (of every file of an
    ``hf:DIR`` directory)."""
    directory = hf_directory(checkpoint)
    if directory is not None:
        files = sorted(p for p in directory.iterdir() if p.is_file()) if directory.is_dir() else []
    else:
        files = [Path(checkpoint)]
    return {"kind": "checkpoint", "sha256": content_hash(files)}


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
    baselines: str | list[str] | tuple[str, ...] | None = (),
    cache: FeatureCache | None = None,
    seeds: int = 1,
    timer: PhaseTimer | None = None,
) -> ProbeOutcome:
    """Probe ``checkpoint`` (a training checkpoint, a ``save_backbone`` file or ``hf:DIR``) on ``task``.

    Features of all layers are extracted once (the weighted-sum probe needs them all); per-layer
    probes are fitted on ``layers`` (``all``, ``last``, ``"i,j"``), plus the weighted-sum probe
    unless ``weighted`` is false; ``random_init`` repeats it all on an untrained copy;
    ``baselines`` (``mfcc``, ``chroma``, ``cqt``) probes handcrafted features with the same MLP
    and splits. With a ``cache``, features come from / go to it (see :mod:`.cache`). ``seeds`` > 1
    refits the backbone's and random init's probes with the probe seeds ``params.seed + 1 ...``
    (same features, same random-init backbone) for :meth:`ProbeOutcome.seed_spread`.
    ``timer`` counts the backbones' feature extraction, the probe fits and the baselines (their
    features and fits) as phases ``probe_features``, ``probe_fits`` and ``probe_baselines``.
    """
    if seeds < 1:
        raise MertlabError(f"seeds: expected at least 1, got {seeds}")
    params = params or ProbeParams()
    task = task if isinstance(task, Task) else load_task(task)
    chosen_baselines = parse_baselines(baselines)
    backbone = load_backbone(checkpoint, registry)
    chosen = resolve_layers(layers, backbone.num_layers)
    device = resolve_device(device)
    cache = cache or FeatureCache(None)
    paths = [str(p) for p in task.paths]
    timer = timer or PhaseTimer()

    def backbone_features(model: Backbone, source: dict[str, Any], what: str) -> FeatureSet:
        with timer.phase(metric_names.PHASE_PROBE_FEATURES):
            return cache.get_or_compute(
                source,
                paths,
                window_seconds,
                lambda: extract_features(model, paths, window_seconds, None, batch_size, device, num_workers, progress),
            ).check_finite(what)

    def report_for(
        features: FeatureSet,
        weighted_sum: bool = weighted,
        probe_layers: list[int] | None = chosen,
        seed_offset: int = 0,
        phase: str = metric_names.PHASE_PROBE_FITS,
    ) -> ProbeReport:
        with timer.phase(phase):
            return probe_task(
                features.features,
                features.layers,
                task,
                params.model_copy(update={"seed": params.seed + seed_offset}),
                probe_layers=probe_layers,
                weighted=weighted_sum,
                device=device,
            )

    features = backbone_features(backbone, checkpoint_identity(checkpoint), str(checkpoint))
    report = report_for(features)
    seed_reports = [report_for(features, seed_offset=k) for k in range(1, seeds)]
    random_report, random_features = None, None
    if random_init:
        untrained = random_init_backbone(backbone, params.seed, registry)
        source = {
            "kind": RANDOM_INIT,
            "backbone": backbone.name,
            "params": backbone.params.model_dump(mode="json"),
            "seed": params.seed,
            "torch": torch.__version__,
        }
        random_features = backbone_features(untrained, source, f"the random-init copy of {checkpoint}")
        random_report = report_for(random_features)
    random_seed_reports = (
        [] if random_features is None else [report_for(random_features, seed_offset=k) for k in range(1, seeds)]
    )
    reports = {}
    for name in chosen_baselines:
        with timer.phase(metric_names.PHASE_PROBE_BASELINES):
            pooled = cache.get_or_compute(
                cache_identity(name),
                paths,
                window_seconds,
                partial(baseline_features, name, paths, window_seconds, progress),
            ).check_finite(f"baseline {name}")
        reports[name] = report_for(
            pooled, weighted_sum=False, probe_layers=None, phase=metric_names.PHASE_PROBE_BASELINES
        )
        reports[name].probes[0].name = BASELINE_PREFIX + name
    return ProbeOutcome(report, random_report, features, reports, seed_reports, random_seed_reports)


# --------------------------------------------------------------------------- reporting
def _fmt(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.4f}"


def _diff(value: float, reference: float) -> str:
    return "n/a" if math.isnan(value) or math.isnan(reference) else f"{value - reference:+.4f}"


def _interval(interval: Interval | None) -> str:
    if interval is None or math.isnan(interval.low):
        return "n/a"
    return f"[{interval.low:.4f}, {interval.high:.4f}]"


def report_table(outcome: ProbeOutcome) -> tuple[tuple[str, ...], list[tuple[str, ...]]]:
    """Header and rows: one row per probe (valid and test of every metric, the test score's 95%
    bootstrap interval), the baselines (majority/chance, handcrafted) and the random-init probes
    when present; the best probe (by valid) is starred. The last column is each test score minus
    the strongest baseline's."""
    report, strongest = outcome.report, outcome.strongest_baseline()
    metric = report.metric
    metrics = METRICS[report.task.type]
    header = (
        "probe",
        *(column for m in metrics for column in (f"valid {m}", f"test {m}", "95% CI")),
        "epochs",
        f"vs {strongest.name} (test {metric})",
    )
    rows: list[tuple[str, ...]] = []

    def add(result: ProbeResult, label: str) -> None:
        cells = [
            cell
            for m in metrics
            for cell in (_fmt(result.valid[m]), _fmt(result.test[m]), _interval(result.test_ci.get(m)))
        ]
        diff = "-" if result is strongest else _diff(result.test[metric], strongest.test[metric])
        rows.append((label, *cells, str(result.best_epoch) if result.best_epoch else "-", diff))

    for result in report.probes:
        add(result, result.name + (" *" if result is report.best else ""))
    for result in outcome.baseline_results():
        add(result, result.name)
    if outcome.random_init is not None:
        for result in outcome.random_init.probes:
            add(result, f"random-init {result.name}" + (" *" if result is outcome.random_init.best else ""))
    return header, rows


def summary_lines(outcome: ProbeOutcome) -> list[str]:
    """A few lines about the task, the best probe, its paired tests and the seed spread,
    printed under the table."""
    report, task = outcome.report, outcome.report.task
    sizes = "/".join(str(len(task.indices(s))) for s in ("train", "valid", "test"))
    kind = f"{task.type}{' (auto-detected)' if task.auto_type else ''}"
    classes = f", {len(task.classes)} {'tags' if task.type == 'multilabel' else 'classes'}" if task.classes else ""
    split = "automatic 70/15/15 split" if task.auto_split else "splits from the CSV"
    best, strongest, metric = report.best, outcome.strongest_baseline(), report.metric
    test = "exact McNemar" if metric == "accuracy" else "paired bootstrap"
    lines = [
        f"task '{task.name}': {kind}{classes}; train/valid/test {sizes} ({split})",
        f"best probe (by valid {metric}): {best.name}, test {metric} {_fmt(best.test[metric])} "
        f"{_interval(best.test_ci.get(metric))} (strongest baseline {strongest.name}: {_fmt(strongest.test[metric])}, "
        f"difference {_diff(best.test[metric], strongest.test[metric])}, {format_p(outcome.p_vs_baseline())})",
    ]
    weights = next((r.layer_weights for r in report.probes if r.layer_weights), None)
    if weights is not None:
        lines.append("weighted-sum layer weights: " + ", ".join(f"{w:.2f}" for w in weights))
    if outcome.random_init is not None:
        rbest = outcome.random_init.best
        lines.append(
            f"random-init best: {rbest.name}, test {metric} {_fmt(rbest.test[metric])} "
            f"{_interval(rbest.test_ci.get(metric))}; best probe vs random init: {format_p(outcome.paired_p(rbest))}"
        )
    lines.append(f"intervals: 95% bootstrap over the {len(task.indices('test'))} test clips; p: two-sided {test}")
    spread = outcome.seed_spread()
    if spread is not None:
        trained, random = spread
        line = (
            f"over {len(trained.values)} probe seeds: best probe test {metric} {trained.mean:.4f} "
            f"+- {trained.std:.4f} (sd; {min(trained.values):.4f} to {max(trained.values):.4f})"
        )
        if random is not None:
            line += f", random init {random.mean:.4f} +- {random.std:.4f}"
        lines.append(line)
    return lines


def verdict(outcome: ProbeOutcome) -> str:
    """One line per task, e.g. ``pitch: 42% [35, 49] (random init 16% [11, 22], p<0.001; best
    baseline cqt 50% [44, 56], p=0.03)``: the best probe's test score and 95% interval beside
    random init's and the strongest baseline's, with the paired test's p-value against each
    (percent for accuracy); with several probe seeds, their mean and sd."""
    metric, report = outcome.metric, outcome.report
    percent = metric == "accuracy"

    def show(value: float) -> str:
        if math.isnan(value):
            return "n/a"
        return f"{100 * value:.0f}%" if percent else f"{metric} {value:.3f}"

    def bounds(interval: Interval | None) -> str:
        if interval is None or math.isnan(interval.low):
            return ""
        if percent:
            return f" [{100 * interval.low:.0f}, {100 * interval.high:.0f}]"
        return f" [{interval.low:.3f}, {interval.high:.3f}]"

    def score(result: ProbeResult) -> str:
        return show(result.test[metric]) + bounds(result.test_ci.get(metric))

    extra = []
    if outcome.random_init is not None:
        rbest = outcome.random_init.best
        extra.append(f"random init {score(rbest)}, {format_p(outcome.paired_p(rbest))}")
    strongest = outcome.strongest_baseline()
    label = strongest.name.removeprefix(BASELINE_PREFIX)
    extra.append(f"best baseline {label} {score(strongest)}, {format_p(outcome.p_vs_baseline())}")
    line = f"{report.task.name}: {score(report.best)} ({'; '.join(extra)})"
    spread = outcome.seed_spread()
    if spread is not None:
        trained, random = spread
        unit, scale = ("%", 100) if percent else ("", 1)
        digits = 1 if percent else 3
        line += (
            f"; over {len(trained.values)} probe seeds {scale * trained.mean:.{digits}f}{unit} "
            f"+- {scale * trained.std:.{digits}f}"
        )
        if random is not None:
            line += f" (random init {scale * random.mean:.{digits}f}{unit} +- {scale * random.std:.{digits}f})"
    return line


def probe_metrics(outcome: ProbeOutcome) -> dict[str, float]:
    """Everything logged to MLflow (test split; NaN metrics are left out): every score, its 95%
    interval (``..._ci_low``/``..._ci_high``), the best probe's paired p-values against random
    init and the strongest baseline (``..._p_vs_random``/``..._p_vs_baseline``) and, with several
    probe seeds, the seed mean and sd (``..._seed_mean``/``..._seed_std``)."""
    report, name = outcome.report, outcome.report.task.name
    metrics: dict[str, float] = {}

    def add(result: ProbeResult, probe_name: str | None) -> None:
        for metric, value in result.test.items():
            metrics[metric_names.probe(name, metric, probe_name)] = value
            interval = result.test_ci.get(metric)
            if interval is not None:
                metrics[metric_names.probe_companion(name, metric, metric_names.CI_LOW, probe_name)] = interval.low
                metrics[metric_names.probe_companion(name, metric, metric_names.CI_HIGH, probe_name)] = interval.high

    add(report.best, None)
    for result in (*report.probes, *outcome.baseline_results()):
        add(result, result.name)
    best_layer = outcome.best_layer()
    if best_layer is not None:
        add(best_layer, BEST_LAYER)
    if outcome.random_init is not None:
        add(outcome.random_init.best, RANDOM_INIT)
    for metric in report.best.test:
        metrics[metric_names.probe_companion(name, metric, metric_names.P_VS_BASELINE)] = outcome.p_vs_baseline(metric)
        p_random = outcome.p_vs_random(metric)
        if p_random is not None:
            metrics[metric_names.probe_companion(name, metric, metric_names.P_VS_RANDOM)] = p_random
        spread = outcome.seed_spread(metric)
        if spread is not None:
            for seeds, probe_name in zip(spread, (None, RANDOM_INIT), strict=True):
                if seeds is not None:
                    metrics[metric_names.probe_companion(name, metric, metric_names.SEED_MEAN, probe_name)] = seeds.mean
                    metrics[metric_names.probe_companion(name, metric, metric_names.SEED_STD, probe_name)] = seeds.std
    return {k: v for k, v in metrics.items() if not math.isnan(v)}


def _predictions(task: Task, result: ProbeResult) -> list[Any]:
    """A probe's test predictions, clip by clip: class names, values, or tag probabilities."""
    scores = result.scores[task.indices("test")]
    if task.type == "classification":
        return [task.classes[i] for i in scores.argmax(axis=1)]
    if task.type == "regression":
        return [float(v) for v in scores]
    return [[round(float(v), 4) for v in row] for row in scores]


def report_dict(outcome: ProbeOutcome, settings: dict[str, Any]) -> dict[str, Any]:
    """The full report as JSON-able data (logged as an artifact), with every probe's test
    predictions clip by clip (so two runs' probes can be paired later)."""
    task = outcome.report.task

    def result_dict(r: ProbeResult) -> dict[str, Any]:
        return {
            "probe": r.name,
            "layer": r.layer,
            "valid": r.valid,
            "test": r.test,
            "test_ci": {m: [i.low, i.high] for m, i in r.test_ci.items()},
            "best_epoch": r.best_epoch,
            "layer_weights": r.layer_weights,
            "test_predictions": _predictions(task, r),
        }

    def probes(report: ProbeReport) -> list[dict[str, Any]]:
        return [result_dict(r) for r in (*report.probes, report.baseline)]

    def handcrafted(name: str, report: ProbeReport) -> dict[str, Any]:
        return {"baseline": name, **result_dict(report.probes[0])}

    test = task.indices("test")
    targets = task.targets[test]
    metrics = METRICS[task.type]
    spread = {m: outcome.seed_spread(m) for m in metrics}
    return {
        "task": {
            "name": task.name,
            "type": task.type,
            "source": str(task.source),
            "classes": task.classes,
            "sizes": {s: int(len(task.indices(s))) for s in ("train", "valid", "test")},
            "auto_split": task.auto_split,
        },
        "settings": settings,
        "metric": outcome.report.metric,
        "best": outcome.report.best.name,
        "probes": probes(outcome.report),
        "random_init": probes(outcome.random_init) if outcome.random_init is not None else None,
        "baselines": [handcrafted(name, r) for name, r in outcome.baselines.items()],
        "strongest_baseline": outcome.strongest_baseline().name,
        "p_vs_random": {m: outcome.p_vs_random(m) for m in metrics} if outcome.random_init is not None else None,
        "p_vs_baseline": {m: outcome.p_vs_baseline(m) for m in metrics},
        "seeds": {
            m: {"trained": list(s[0].values), "random_init": list(s[1].values) if s[1] else None}
            for m, s in spread.items()
            if s is not None
        },
        "test_clips": {
            "paths": [str(task.paths[i]) for i in test],
            "targets": [task.classes[int(t)] for t in targets] if task.type == "classification" else targets.tolist(),
        },
    }


def settings_sha(settings: dict[str, Any]) -> str:
    """Fingerprint of probe settings (tag ``probe/<task>/settings``): equal settings, same probe."""
    import hashlib
    import json

    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def log_probe(
    outcome: ProbeOutcome, run_id: str, tracking_uri: str, settings: dict[str, Any] | None = None, step: int = 0
) -> None:
    """Log the probe scores onto an existing MLflow run: metrics (see :func:`probe_metrics`) at
    ``step``, the tags ``probe/<task>/best``, ``probe/<task>/strongest_baseline`` and
    ``probe/<task>/settings`` (:func:`settings_sha`),
    and the artifacts ``probe/<task>.json`` and ``probe/<task>_layers.png`` (:func:`.plots.layer_plot`)."""
    import tempfile
    import time

    from mlflow.entities import Metric

    client = _client_for_run(run_id, tracking_uri)
    name = outcome.report.task.name
    now = int(time.time() * 1000)
    client.log_batch(
        run_id, metrics=[Metric(k, float(v), now, step) for k, v in sorted(probe_metrics(outcome).items())]
    )
    client.set_tag(run_id, f"probe/{name}/best", outcome.report.best.name)
    client.set_tag(run_id, metric_names.probe_strongest_baseline_tag(name), outcome.strongest_baseline().name)
    client.log_dict(run_id, report_dict(outcome, settings or {}), f"probe/{name}.json")
    with tempfile.TemporaryDirectory() as tmp:
        client.log_artifact(run_id, str(layer_plot(outcome, Path(tmp) / f"{name}_layers.png")), "probe")
    client.set_tag(run_id, f"probe/{name}/settings", settings_sha(settings or {}))
