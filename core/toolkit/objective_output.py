"""The boundary between an objective and the training loop: every objective output is checked here.

:func:`check_objective_output` runs on what ``Objective.forward`` returns in every training and
validation step (:mod:`mertlab.train.module`) and in the contract checks of
:mod:`mertlab.testing`. A violation is one :class:`~mertlab.errors.ObjectiveError` line naming
the objective's alias, the objective and the plugin distribution it comes from -- never a
traceback from deep inside the training loop.

The checks:

* the output is a :class:`~mertlab.contracts.ObjectiveOutput`;
* ``loss`` is a floating-point tensor with one value and no dimensions (``shape ()``: reduce a
  per-frame or per-clip loss, e.g. over the valid masked frames);
* with ``require_finite``, the loss is finite (the contract checks; in training a non-finite
  loss is not an error: the step is skipped and counted, see ``trainer.max_consecutive_nonfinite``);
* ``metrics`` is a dict whose keys look like ``family/key`` (``acc/cb0``, logged as
  ``acc/<alias>/cb0``) with characters MLflow accepts, and whose values are floating-point
  tensors holding one value.
"""

from __future__ import annotations

import re
from typing import Any

from torch import Tensor

from mertlab.contracts import Objective, ObjectiveOutput
from mertlab.errors import ObjectiveError

#: ``family/key`` metric names: MLflow's characters, a family and a key, no empty part.
METRIC_KEY = re.compile(r"[A-Za-z0-9_.\- ]+(/[A-Za-z0-9_.\- ]+)+")


def objective_label(objective: Objective, alias: str | None = None) -> str:
    """``objectives.focal: objective 'focal_loss' (my-plugin 0.1.0)`` (without the alias part
    when ``alias`` is None)."""
    from mertlab.plugin_system.registry import component_label

    label = component_label(type(objective), "objective")
    return f"objectives.{alias}: {label}" if alias else label


def check_objective_output(
    objective: Objective, result: Any, alias: str | None = None, require_finite: bool = False
) -> ObjectiveOutput:
    """Check ``objective``'s output ``result``; return it. Raises :class:`ObjectiveError`
    naming the alias, the objective and its distribution on the first violation."""
    label = objective_label(objective, alias)
    if not isinstance(result, ObjectiveOutput):
        raise ObjectiveError(
            f"{label}: forward() must return mertlab.contracts.ObjectiveOutput(loss=..., metrics=...), "
            f"got {type(result).__name__}"
        )
    loss = result.loss
    if not isinstance(loss, Tensor):
        raise ObjectiveError(f"{label}: loss must be a scalar tensor, got {type(loss).__name__}")
    if loss.dim() != 0:
        raise ObjectiveError(
            f"{label}: loss must be a scalar tensor (shape ()), got shape {tuple(loss.shape)}; reduce it "
            "(e.g. the mean over the valid masked frames)"
        )
    if not loss.dtype.is_floating_point:
        raise ObjectiveError(f"{label}: loss must be floating point, got {loss.dtype}")
    if require_finite and not bool(loss.isfinite()):
        raise ObjectiveError(f"{label}: loss is {float(loss.detach())} (not finite)")
    if not isinstance(result.metrics, dict):
        raise ObjectiveError(f"{label}: metrics must be a dict of name -> tensor, got {type(result.metrics).__name__}")
    for key, value in result.metrics.items():
        if not isinstance(key, str) or not METRIC_KEY.fullmatch(key):
            raise ObjectiveError(
                f"{label}: metric name {key!r} must look like 'family/key' (e.g. 'acc/cb0', logged as "
                f"'acc/{alias or '<alias>'}/cb0'): letters, digits, _ - . and space around one or more '/'"
            )
        if not isinstance(value, Tensor) or value.numel() != 1 or not value.dtype.is_floating_point:
            got = f"{value.dtype} of shape {tuple(value.shape)}" if isinstance(value, Tensor) else type(value).__name__
            raise ObjectiveError(f"{label}: metrics[{key!r}] must be a floating-point tensor with one value, got {got}")
    return result
