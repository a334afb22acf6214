"""``masked_regression``: regress continuous teacher features on masked frames.

MERT's musical objective: a linear head on the chosen backbone layer predicts the CQT of the
clean audio (336 bins), trained with MSE on the masked frames (weight 1 next to the codebook CEs).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from mertlab.contracts import BackboneOutput, ObjectiveOutput, TargetInfo, Targets
from mertlab.hookspecs import hookimpl
from mertlab.toolkit.masked_loss import MaskedObjective, MaskedObjectiveParams, masked_mean, reduce_frames


class MaskedRegressionParams(MaskedObjectiveParams):
    loss: Literal["mse", "l1"] = Field(
        "mse", description="Per-frame error, averaged over feature dims (MERT's CQT loss: mse)."
    )


class MaskedRegression(MaskedObjective):
    """Linear head ``hidden_dim -> target dim``; ``loss`` is the per-frame error (mean over the
    feature dimension) averaged over masked, non-padding frames (+ ``unmasked_weight`` x the
    unmasked-frame average). Metric: ``mse/masked`` (masked-frame MSE, whatever ``loss`` is,
    so runs with different losses compare)."""

    name = "masked_regression"
    summary = "MERT CQT reconstruction: linear head, MSE or L1 on masked frames of continuous targets"
    Params = MaskedRegressionParams
    params: MaskedRegressionParams
    accepts = ("continuous",)

    def __init__(
        self, params: MaskedRegressionParams, *, hidden_dim: int, num_layers: int, target_info: TargetInfo
    ) -> None:
        super().__init__(params, hidden_dim=hidden_dim, num_layers=num_layers, target_info=target_info)
        self.head = nn.Linear(hidden_dim, target_info.dim)

    def forward(self, out: BackboneOutput, targets: Targets, mask: Tensor) -> ObjectiveOutput:
        p: MaskedRegressionParams = self.params
        frames = self.loss_frames(out, targets, mask)
        # float32 error: CQT magnitudes squared can overflow half precision.
        error = self.head(frames.features).float() - frames.targets.float()
        squared = error.pow(2).mean(-1)
        per_frame = squared if p.loss == "mse" else error.abs().mean(-1)
        loss = reduce_frames(per_frame, frames.masked, p.unmasked_weight)
        with torch.no_grad():
            metrics = {"mse/masked": masked_mean(squared.detach(), frames.masked)}
        return ObjectiveOutput(loss=loss, metrics=metrics)


@hookimpl
def register_objectives(register):
    register(MaskedRegression)
