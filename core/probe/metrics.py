"""Probe metrics per task type (MARBLE: accuracy; ROC-AUC and average precision for tagging; R²).

``scores`` are what a probe outputs: class probabilities ``[N, C]`` (classification), tag
probabilities ``[N, C]`` (multilabel) or predicted values ``[N]`` (regression). The first metric
of each type is the primary one: it selects the epoch (early stopping) and the best layer.
"""

from __future__ import annotations

import math

import numpy as np
from sklearn.metrics import average_precision_score, r2_score, roc_auc_score

METRICS: dict[str, tuple[str, ...]] = {
    "classification": ("accuracy",),
    "multilabel": ("roc_auc", "average_precision"),
    "regression": ("r2",),
}


def primary_metric(task_type: str) -> str:
    return METRICS[task_type][0]


def compute_metrics(task_type: str, targets: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    """All metrics of ``task_type`` (higher is better for each).

    Multilabel metrics are macro averages over the tags that have both positive and negative
    examples in ``targets`` (ROC-AUC is undefined otherwise); NaN when no tag qualifies.
    """
    if task_type == "classification":  # sklearn's accuracy_score, without its input checks (~20 ms a call)
        return {"accuracy": float(np.mean(scores.argmax(axis=1) == targets)) if len(targets) else math.nan}
    if task_type == "regression":
        return {"r2": float(r2_score(targets, scores)) if len(targets) > 1 else math.nan}
    positives = targets.sum(axis=0)
    usable = (positives > 0) & (positives < len(targets))
    if not usable.any():
        return {"roc_auc": math.nan, "average_precision": math.nan}
    return {
        "roc_auc": float(roc_auc_score(targets[:, usable], scores[:, usable], average="macro")),
        "average_precision": float(average_precision_score(targets[:, usable], scores[:, usable], average="macro")),
    }


def baseline_scores(task_type: str, train_targets: np.ndarray, num_rows: int, num_classes: int) -> np.ndarray:
    """Input-independent predictions from the train labels alone: the majority class
    (classification), each tag's train frequency (multilabel), the train mean (regression)."""
    if task_type == "classification":
        counts = np.bincount(train_targets, minlength=num_classes)
        return np.tile(np.eye(num_classes)[counts.argmax()], (num_rows, 1))
    if task_type == "multilabel":
        return np.tile(train_targets.mean(axis=0), (num_rows, 1))
    return np.full(num_rows, float(train_targets.mean()))
