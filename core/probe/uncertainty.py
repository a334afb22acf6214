"""How sure a probe score is: bootstrap confidence intervals over the test clips, and paired
tests between two probes scored on the same clips.

* **Interval**: the percentile bootstrap (Efron & Tibshirani, "An Introduction to the
  Bootstrap", 1993, ch. 13): the test clips are resampled with replacement ``resamples`` times,
  the metric recomputed on each resample, and the 2.5th and 97.5th percentiles are the 95%
  interval. Every probe of a task uses the same resamples (same ``seed``), so intervals are
  comparable.
* **Paired test** of "A scores differently from B on these clips" (two-sided):
  for accuracy the exact McNemar test on the clips exactly one of the two gets right
  (Dietterich, "Approximate statistical tests for comparing supervised classification learning
  algorithms", 1998); for the other metrics (R², ROC-AUC, average precision) the paired
  bootstrap: both are rescored on the same resamples and the p-value is the share of resampled
  differences at least as far from the observed difference as the observed difference is from 0
  (the bootstrap distribution shifted to the null; Efron & Tibshirani, section 16.4), counted
  as ``(1 + hits) / (1 + resamples)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.stats import binomtest, rankdata

#: Bootstrap resamples of the test clips (accuracy, R²).
RESAMPLES = 2000
#: Resamples for tagging (ROC-AUC, average precision), whose every resample re-ranks every tag:
#: fewer, so a large tagging task's intervals take seconds per probe, not minutes.
TAGGING_RESAMPLES = 200


def default_resamples(task_type: str) -> int:
    return TAGGING_RESAMPLES if task_type == "multilabel" else RESAMPLES


#: Coverage of the confidence intervals.
LEVEL = 0.95


@dataclass(frozen=True)
class Interval:
    """A confidence interval ``[low, high]`` (NaN bounds when the metric is undefined)."""

    low: float
    high: float

    def contains(self, value: float) -> bool:
        return self.low <= value <= self.high


def resample_indices(n: int, resamples: int = RESAMPLES, seed: int = 0) -> np.ndarray:
    """``[resamples, n]`` row indices, each row ``n`` draws with replacement from ``range(n)``."""
    return np.random.default_rng(seed).integers(0, n, size=(resamples, n))


def _r2(targets: np.ndarray, predictions: np.ndarray) -> np.ndarray:
    """R² along the last axis (NaN where the targets are constant)."""
    residual = ((targets - predictions) ** 2).sum(axis=-1)
    total = ((targets - targets.mean(axis=-1, keepdims=True)) ** 2).sum(axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(total > 0, 1.0 - residual / np.where(total > 0, total, 1.0), np.nan)


def resampled_metrics(
    task_type: str, targets: np.ndarray, scores: np.ndarray, indices: np.ndarray
) -> dict[str, np.ndarray]:
    """Every metric of ``task_type`` on each resample (rows of ``indices``): name -> ``[resamples]``."""
    if task_type == "classification":
        correct = (scores.argmax(axis=1) == targets).astype(np.float64)
        return {"accuracy": correct[indices].mean(axis=1)}
    if task_type == "regression":
        return {"r2": _r2(targets[indices].astype(np.float64), scores[indices].astype(np.float64))}
    chunk = max(1, CHUNK_ELEMENTS // max(1, indices.shape[1] * targets.shape[1]))
    parts = [
        _tagging_metrics(targets[rows], scores[rows])
        for rows in np.array_split(indices, range(chunk, len(indices), chunk))
    ]
    return {name: np.concatenate([p[name] for p in parts]) for name in ("roc_auc", "average_precision")}


#: Resampled tagging metrics are computed on ``[resamples, clips, tags]`` arrays of at most this many elements.
CHUNK_ELEMENTS = 4_000_000


def _tagging_metrics(targets: np.ndarray, scores: np.ndarray) -> dict[str, np.ndarray]:
    """Macro ROC-AUC and average precision of each of a batch of clip sets, ``[B, n, C]`` in:
    the values :func:`~mertlab.probe.metrics.compute_metrics` gives (over the tags with both
    positive and negative clips; tied scores count as sklearn counts them), ``[B]`` out."""
    n = targets.shape[1]
    positives = targets.sum(axis=1)  # [B, C]
    usable = (positives > 0) & (positives < n)
    # ROC-AUC from average ranks (Mann-Whitney U): ties count one half
    ranks = rankdata(scores, axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        auc = ((ranks * targets).sum(axis=1) - positives * (positives + 1) / 2) / (positives * (n - positives))
    # average precision: the precision at the end of each group of tied scores, weighted by the
    # positives in the group (sklearn's step-wise sum over thresholds)
    order = np.argsort(-scores, axis=1, kind="stable")
    sorted_scores = np.take_along_axis(scores, order, axis=1)
    sorted_targets = np.take_along_axis(targets, order, axis=1)
    true_positives = np.cumsum(sorted_targets, axis=1)
    position = np.arange(n).reshape(1, n, 1)
    last_of_group = np.ones_like(sorted_scores, dtype=bool)
    last_of_group[:, :-1] = sorted_scores[:, :-1] != sorted_scores[:, 1:]
    group_end = np.where(last_of_group, position, n)
    group_end = np.flip(np.minimum.accumulate(np.flip(group_end, axis=1), axis=1), axis=1)
    precision_at_end = np.take_along_axis(true_positives, group_end, axis=1) / (group_end + 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        ap = (sorted_targets * precision_at_end).sum(axis=1) / positives

    def macro(values: np.ndarray) -> np.ndarray:
        with np.errstate(invalid="ignore"):
            total = np.where(usable, values, 0.0).sum(axis=1)
            return np.where(usable.any(axis=1), total / usable.sum(axis=1), np.nan)

    return {"roc_auc": macro(auc), "average_precision": macro(ap)}


def _percentiles(values: np.ndarray, level: float) -> Interval:
    finite = values[np.isfinite(values)]
    if not len(finite):
        return Interval(math.nan, math.nan)
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(finite, [tail, 100 - tail])
    return Interval(float(low), float(high))


def confidence_intervals(
    task_type: str,
    targets: np.ndarray,
    scores: np.ndarray,
    resamples: int | None = None,
    level: float = LEVEL,
    seed: int = 0,
) -> dict[str, Interval]:
    """Percentile-bootstrap interval of every metric of ``task_type`` over the given clips
    (``resamples``: default :func:`default_resamples`)."""
    indices = resample_indices(len(targets), resamples or default_resamples(task_type), seed)
    return {name: _percentiles(v, level) for name, v in resampled_metrics(task_type, targets, scores, indices).items()}


def mcnemar_p(correct_a: np.ndarray, correct_b: np.ndarray) -> float:
    """Exact two-sided McNemar p-value of two classifiers' per-clip correctness (bool arrays)."""
    only_a = int(np.sum(correct_a & ~correct_b))
    only_b = int(np.sum(correct_b & ~correct_a))
    if only_a + only_b == 0:
        return 1.0
    return float(min(1.0, binomtest(min(only_a, only_b), only_a + only_b, 0.5).pvalue))


def paired_p(
    task_type: str,
    metric: str,
    targets: np.ndarray,
    scores_a: np.ndarray,
    scores_b: np.ndarray,
    resamples: int | None = None,
    seed: int = 0,
) -> float:
    """Two-sided p-value that probes A and B score ``metric`` equally on these clips (see the
    module docstring: exact McNemar for accuracy, the paired bootstrap otherwise). NaN when the
    metric is undefined on the clips."""
    if metric == "accuracy":
        return mcnemar_p(scores_a.argmax(axis=1) == targets, scores_b.argmax(axis=1) == targets)

    def difference(indices: np.ndarray) -> np.ndarray:
        a = resampled_metrics(task_type, targets, scores_a, indices)[metric]
        return a - resampled_metrics(task_type, targets, scores_b, indices)[metric]

    observed = float(difference(np.arange(len(targets))[None])[0])
    if not math.isfinite(observed):
        return math.nan
    differences = difference(resample_indices(len(targets), resamples or default_resamples(task_type), seed))
    differences = differences[np.isfinite(differences)]
    hits = int(np.sum(np.abs(differences - observed) >= abs(observed)))
    return (1 + hits) / (1 + len(differences))


def format_p(p: float) -> str:
    """``p<0.001``, ``p=0.03``, ``p=0.41`` (two significant digits), ``p=n/a`` for NaN."""
    if math.isnan(p):
        return "p=n/a"
    if p < 0.001:
        return "p<0.001"
    return f"p={float(f'{p:.2g}'):g}"
