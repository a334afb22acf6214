"""``mertlab teachers evaluate SPEC TASK``: judge a spec's teachers on a labelled task before
any pre-training -- what a teacher-plugin author runs first.

Every teacher runs on the task's audio (window by window, :mod:`mertlab.probe.frames`):

* **discrete** teachers: per codebook, over every frame of every clip with the clip's label on
  each frame (the HuBERT paper's analysis, Hsu et al. 2021, Sec. V-C, with clip labels in place
  of frame-aligned phones): code **perplexity** (exp of the code entropy: codes effectively
  used), **cluster purity** ``E_y[max_z p(z|y)]``, **label purity** ``E_z[max_y p(y|z)]`` (the
  paper's phone purity) and **PNMI** ``I(y; z) / H(y)``: the share of label uncertainty the codes
  remove (1: the codes determine the label; 0: independent). The unsuffixed metric is the mean
  over codebooks. Purity and PNMI need a classification task; other tasks get perplexity only.
* **continuous** teachers: the MARBLE MLP probe (:mod:`mertlab.probe.fit`, the task's splits)
  on the teacher's features mean-pooled per clip; its test score.

Teachers are ranked within their kind: discrete by PNMI, continuous by the probe's test score.
Each teacher gets one MLflow run (experiment ``teacher-eval`` by default) with the metrics
``teacher_eval/<task>/<metric>`` (``.../<metric>/cb<i>`` per codebook).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mertlab.errors import MertlabError
from mertlab.experiment.spec import ExperimentSpec
from mertlab.experiment.tracking import ensure_experiment, flatten
from mertlab.plugin_system.registry import get_registry
from mertlab.probe.extract import FeatureSet, resolve_device
from mertlab.probe.fit import ProbeParams, probe_task
from mertlab.probe.frames import iter_file_frames, pooled_frames
from mertlab.probe.metrics import primary_metric
from mertlab.probe.task import Task, load_task

EXPERIMENT = "teacher-eval"
DISCRETE_METRICS = ("pnmi", "label_purity", "cluster_purity", "perplexity")


def metric_name(task: str, metric: str, codebook: int | None = None) -> str:
    """``teacher_eval/<task>/<metric>`` (``/cb<i>`` for one codebook)."""
    return f"teacher_eval/{task}/{metric}" + (f"/cb{codebook}" if codebook is not None else "")


# --------------------------------------------------------------------------- code statistics
def joint_counts(codes: np.ndarray, labels: np.ndarray, vocab_size: int, num_labels: int) -> np.ndarray:
    """``[vocab_size, num_labels]`` co-occurrence counts of frame codes and frame labels."""
    codes, labels = np.asarray(codes, dtype=np.int64).ravel(), np.asarray(labels, dtype=np.int64).ravel()
    if codes.shape != labels.shape:
        raise ValueError(f"{codes.size} codes but {labels.size} labels")
    if codes.size and (codes.min() < 0 or codes.max() >= vocab_size):
        raise MertlabError(f"codes outside the vocabulary 0..{vocab_size - 1}")
    flat = np.bincount(codes * num_labels + labels, minlength=vocab_size * num_labels)
    return flat.reshape(vocab_size, num_labels)


def _entropy(p: np.ndarray) -> float:
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


def code_statistics(counts: np.ndarray) -> dict[str, float]:
    """Perplexity, cluster purity, label purity and PNMI from joint counts ``[codes, labels]``
    (see the module docstring); NaN for PNMI when the labels carry no uncertainty."""
    total = counts.sum()
    if total == 0:
        raise MertlabError("no frames to evaluate")
    p = counts / total
    # Marginals from the integer counts: summed probabilities of a single label can come out as
    # 1 - 1e-16, whose entropy is a tiny positive number instead of 0 (and PNMI 0 instead of NaN).
    p_code, p_label = counts.sum(axis=1) / total, counts.sum(axis=0) / total
    h_label = _entropy(p_label)
    mutual = min(max(0.0, _entropy(p_code) + h_label - _entropy(p.ravel())), h_label)
    return {
        "pnmi": mutual / h_label if h_label > 0 else math.nan,
        "label_purity": float(p.max(axis=1).sum()),
        "cluster_purity": float(p.max(axis=0).sum()),
        "perplexity": math.exp(_entropy(p_code)),
    }


# --------------------------------------------------------------------------- evaluation
@dataclass
class TeacherScores:
    """One teacher's evaluation on one task; ``score`` ranks it (PNMI or probe test score)."""

    alias: str
    name: str
    kind: str
    task: str
    metrics: dict[str, float] = field(default_factory=dict)  # metric -> value (cb-suffixed too)
    score_name: str = ""
    run_id: str | None = None

    @property
    def score(self) -> float:
        return self.metrics.get(self.score_name, math.nan)


def _frame_fn(teacher: Any, device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
    def frames(wav: torch.Tensor) -> torch.Tensor:
        targets = teacher.targets(wav[None].to(device), torch.tensor([wav.shape[0]], device=device))
        return targets.values[0, : int(targets.lengths[0])].cpu()

    return frames


def _discrete(
    teacher: Any, task: Task, window_seconds: float, device: torch.device, progress: bool
) -> dict[str, float]:
    vocab = teacher.info.vocab_sizes
    labelled = task.type == "classification"
    counts = [np.zeros((v, max(1, len(task.classes)) if labelled else 1), dtype=np.int64) for v in vocab]
    paths = [str(p) for p in task.paths]
    for index, codes in iter_file_frames(
        _frame_fn(teacher, device), paths, teacher.sample_rate, window_seconds, progress, desc=f"teacher {teacher.name}"
    ):
        label = int(task.targets[index]) if labelled else 0
        for cb, v in enumerate(vocab):
            counts[cb] += joint_counts(codes[:, cb].numpy(), np.full(codes.shape[0], label), v, counts[cb].shape[1])
    metrics: dict[str, float] = {}
    per_cb = [code_statistics(c) for c in counts]
    names = DISCRETE_METRICS if labelled else ("perplexity",)
    for name in names:
        for cb, stats in enumerate(per_cb):
            metrics[f"{name}/cb{cb}"] = stats[name]
        metrics[name] = float(np.mean([stats[name] for stats in per_cb]))
    return metrics


def _continuous(
    teacher: Any, task: Task, window_seconds: float, params: ProbeParams, device: torch.device, progress: bool
) -> dict[str, float]:
    paths = [str(p) for p in task.paths]
    pooled = pooled_frames(
        _frame_fn(teacher, device),
        paths,
        teacher.sample_rate,
        window_seconds,
        progress=progress,
        desc=f"teacher {teacher.name}",
    )
    features = FeatureSet(paths, pooled[:, None, :], [0], np.zeros(len(paths)))
    report = probe_task(features.features, features.layers, task, params, weighted=False, device=device)
    result = report.probes[0]
    metrics = {f"probe_{m}": v for m, v in result.test.items()}
    metrics.update({f"probe_valid_{m}": v for m, v in result.valid.items()})
    metrics.update({f"chance_{m}": v for m, v in report.baseline.test.items()})
    return metrics


def evaluate_teachers(
    spec: ExperimentSpec,
    task: str | Path | Task,
    window_seconds: float = 5.0,
    params: ProbeParams | None = None,
    device: str = "cpu",
    progress: bool = True,
    registry: Any = None,
    aliases: list[str] | None = None,
) -> list[TeacherScores]:
    """Evaluate every teacher of ``spec`` (or only ``aliases``) on ``task``, ranked: discrete
    teachers by PNMI, then continuous ones by the probe's test score (best first)."""

    if registry is None:
        registry = get_registry()
    task = task if isinstance(task, Task) else load_task(task)
    params = params or ProbeParams()
    unknown = [a for a in aliases or [] if a not in spec.teachers]
    if unknown:
        raise MertlabError(
            f"--teacher: no teacher alias {unknown[0]!r} in the spec (defined: {', '.join(spec.teachers)})"
        )
    torch_device = resolve_device(device)
    scores = []
    for alias, component in spec.teachers.items():
        if aliases and alias not in aliases:
            continue
        teacher = registry.build("teacher", component.name, component.params).to(torch_device).eval()
        kind = teacher.info.kind
        if kind == "discrete":
            metrics = _discrete(teacher, task, window_seconds, torch_device, progress)
            score_name = "pnmi" if task.type == "classification" else "perplexity"
        else:
            metrics = _continuous(teacher, task, window_seconds, params, torch_device, progress)
            score_name = f"probe_{primary_metric(task.type)}"
        scores.append(TeacherScores(alias, component.name, kind, task.name, metrics, score_name))
    order = {"discrete": 0, "continuous": 1}
    return sorted(scores, key=lambda s: (order.get(s.kind, 2), -s.score if math.isfinite(s.score) else math.inf))


def scores_table(scores: list[TeacherScores]) -> tuple[tuple[str, ...], list[tuple[str, ...]]]:
    """Header and one row per teacher (ranked as given): PNMI/purities/perplexity for discrete
    teachers, the probe's valid/test score and chance (test) for continuous ones."""
    header = (
        "rank",
        "teacher",
        "plugin",
        "kind",
        "pnmi",
        "label purity",
        "cluster purity",
        "perplexity",
        "probe valid",
        "probe test",
        "chance",
    )

    def cell(s: TeacherScores, key: str) -> str:
        value = s.metrics.get(key)
        return "-" if value is None or not math.isfinite(value) else f"{value:.3f}"

    rows = []
    for rank, s in enumerate(scores, 1):
        m = s.score_name.removeprefix("probe_")
        rows.append(
            (
                str(rank),
                s.alias,
                s.name,
                s.kind,
                *(cell(s, k) for k in DISCRETE_METRICS),
                cell(s, f"probe_valid_{m}"),
                cell(s, f"probe_{m}"),
                cell(s, f"chance_{m}"),
            )
        )
    return header, rows


def log_scores(
    scores: list[TeacherScores],
    spec: ExperimentSpec,
    tracking_uri: str,
    experiment: str = EXPERIMENT,
    registry: Any = None,
) -> None:
    """One MLflow run per teacher in ``experiment`` (run name ``<spec name>/<alias>``): its
    params, plugin and task as tags, the metrics ``teacher_eval/<task>/<metric>``."""
    import time

    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    exp_id = ensure_experiment(client, experiment)
    now = int(time.time() * 1000)
    for rank, s in enumerate(scores, 1):
        component = spec.teachers[s.alias]
        tags = {
            "teacher": s.name,
            "teacher.alias": s.alias,
            "teacher.kind": s.kind,
            "task": s.task,
            "spec": spec.name,
            "rank": str(rank),
        }
        run = client.create_run(exp_id, run_name=f"{spec.name}/{s.alias}", tags=tags)
        s.run_id = run.info.run_id
        params = [Param(k, v) for k, v in flatten(component.params, "params").items()]
        metrics = [
            Metric(metric_name(s.task, *_split_cb(k)), float(v), now, 0)
            for k, v in s.metrics.items()
            if math.isfinite(v)
        ]
        client.log_batch(s.run_id, metrics=metrics, params=params)
        client.set_terminated(s.run_id, "FINISHED")


def _split_cb(key: str) -> tuple[str, int | None]:
    metric, _, cb = key.partition("/cb")
    return (metric, int(cb)) if cb else (key, None)
