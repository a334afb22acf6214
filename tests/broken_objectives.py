"""Deliberately broken objectives, each making one mistake a plugin author can make; installed
by tests into a plugin manager they build, as a distribution ``broken-objectives 0.0.1``."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mertlab.contracts import ObjectiveOutput
from mertlab.hookspecs import hookimpl
from mertlab.toolkit.masked_loss import MaskedObjective, MaskedObjectiveParams


class MaskedL1(MaskedObjective):
    """A correct objective: L1 of a linear head on the masked frames that have a target."""

    name = "masked_l1"
    summary = "masked L1 regression (correct baseline)"
    Params = MaskedObjectiveParams
    accepts = ("continuous",)

    def __init__(self, params, *, hidden_dim, num_layers, target_info):
        super().__init__(params, hidden_dim=hidden_dim, num_layers=num_layers, target_info=target_info)
        self.head = nn.Linear(hidden_dim, target_info.dim)

    def frame_errors(self, out, targets):
        """``[B, T]`` L1 error of every frame (padding included)."""
        return (self.head(out.hidden_states[-1]).float() - targets.values.float()).abs().mean(-1)

    def forward(self, out, targets, mask):
        selected = mask & ~targets.padding_mask & ~out.padding_mask
        loss = (self.frame_errors(out, targets) * selected).sum() / selected.sum().clamp_min(1)
        return ObjectiveOutput(loss=loss, metrics={"l1/masked": loss.detach()})


class PerFrameLoss(MaskedL1):
    """Returns the per-frame loss ``[B, T]`` instead of its mean."""

    name = "per_frame_loss"
    summary = "per-frame loss, not reduced"

    def forward(self, out, targets, mask):
        return ObjectiveOutput(loss=self.frame_errors(out, targets) * mask)


class IgnoresLengths(MaskedL1):
    """Averages over the masked frames, but forgets targets.lengths (frames without a target)."""

    name = "ignores_lengths"
    summary = "ignores targets.lengths"

    def forward(self, out, targets, mask):
        loss = (self.frame_errors(out, targets) * mask).sum() / mask.sum().clamp_min(1)
        return ObjectiveOutput(loss=loss)


class NanWithoutMask(MaskedL1):
    """Divides by the number of masked frames: 0/0 = NaN on a batch with none."""

    name = "nan_without_mask"
    summary = "0/0 without masked frames"

    def forward(self, out, targets, mask):
        selected = mask & ~targets.padding_mask & ~out.padding_mask
        return ObjectiveOutput(loss=(self.frame_errors(out, targets) * selected).sum() / selected.sum())


class IntegerMetric(MaskedL1):
    """Logs a count as an integer tensor under a name without a family."""

    name = "integer_metric"
    summary = "integer metric named without a family"

    def forward(self, out, targets, mask):
        result = super().forward(out, targets, mask)
        return ObjectiveOutput(result.loss, {"masked_frames": mask.sum()})


class OneVocabulary(MaskedL1):
    """Classifies every codebook with a head sized for the first codebook's vocabulary."""

    name = "one_vocabulary"
    summary = "one head size for all codebooks"
    accepts = ("discrete",)

    def __init__(self, params, *, hidden_dim, num_layers, target_info):
        super().__init__(params, hidden_dim=hidden_dim, num_layers=num_layers, target_info=target_info)
        self.heads = nn.ModuleList(nn.Linear(hidden_dim, target_info.vocab_sizes[0]) for _ in target_info.vocab_sizes)

    def forward(self, out, targets, mask):
        frames = self.loss_frames(out, targets, mask)
        losses = [F.cross_entropy(h(frames.features).float(), frames.targets[:, i]) for i, h in enumerate(self.heads)]
        return ObjectiveOutput(loss=torch.stack(losses).nan_to_num().mean())


class HalfLossUnderAutocast(MaskedL1):
    """Under autocast, returns the loss as an integer (rounded) tensor."""

    name = "rounds_under_autocast"
    summary = "integer loss under autocast"

    def forward(self, out, targets, mask):
        result = super().forward(out, targets, mask)
        if torch.is_autocast_enabled("cpu"):
            return ObjectiveOutput(result.loss.round().long())
        return result


class DetachedLoss(MaskedL1):
    """Returns its loss detached from the graph (as ``.item()`` or ``torch.no_grad()`` would)."""

    name = "detached_loss"
    summary = "loss without a graph"

    def forward(self, out, targets, mask):
        result = super().forward(out, targets, mask)
        return ObjectiveOutput(result.loss.detach(), result.metrics)


#: name -> (check that fails, fragment of its message)
BROKEN = {
    "per_frame_loss": ("loss", "loss must be a scalar tensor (shape ()), got shape (2, 20)"),
    "ignores_lengths": ("padding", "the loss changes with what lies past targets.lengths"),
    "nan_without_mask": ("mask_extremes", "no frame masked) loss is nan (not finite)"),
    "integer_metric": ("loss", "metric name 'masked_frames' must look like 'family/key'"),
    "one_vocabulary": ("vocabularies", "crashed: IndexError"),
    "rounds_under_autocast": ("bf16", "loss must be floating point, got torch.int64"),
    "detached_loss": ("loss", "the loss is not connected to the hidden states (no grad_fn)"),
}


@hookimpl
def register_objectives(register):
    for cls in (
        MaskedL1,
        PerFrameLoss,
        IgnoresLengths,
        NanWithoutMask,
        IntegerMetric,
        OneVocabulary,
        HalfLossUnderAutocast,
        DetachedLoss,
    ):
        register(cls)
