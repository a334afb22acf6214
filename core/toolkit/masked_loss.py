"""Shared pieces of masked-frame objectives (``masked_prediction``, ``masked_regression``,
``linear_classification`` and third-party ones): which backbone layer to read, which frames a
loss is computed on, and how per-frame losses are reduced over masked / unmasked frames.

Objective plugins never import each other; what they share lives here.

Conventions (HuBERT / MERT, fairseq ``hubert_criterion``):

* the loss is averaged over the *masked, non-padding* frames; a frame is padding when either the
  backbone or the teacher says so;
* ``unmasked_weight`` adds ``weight x`` the same average over the unmasked, non-padding frames
  (HuBERT's ``pred_nomask_weight``; MERT uses 0);
* a batch without masked frames gives a loss of exactly 0 that is still connected to the
  objective's parameters (zero gradients, no NaN), so a step never breaks on an unlucky mask.

:class:`MaskedObjective` and :class:`CodebookObjective` are bases that do the construction
checks and frame gathering, so an objective is its head and its loss.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator
from torch import Tensor

from mertlab.contracts import BackboneOutput, Objective, ObjectiveOutput, Params, TargetInfo, Targets
from mertlab.errors import ObjectiveError


# --------------------------------------------------------------------------- params
class MaskedObjectiveParams(Params):
    """Params every masked-frame objective has: the layer it reads and the unmasked-frame weight."""

    layer: int = Field(
        -1,
        description=(
            "Index into the backbone's hidden_states (0 = encoder input, i = output of encoder "
            "layer i); negative counts from the end, -1 = last layer (MERT/HuBERT)."
        ),
    )
    unmasked_weight: float = Field(
        0.0,
        ge=0,
        description="Weight of the loss on unmasked (visible) frames, added to the masked-frame loss (MERT/HuBERT: 0).",
    )


class CodebookObjectiveParams(MaskedObjectiveParams):
    """Params of objectives that classify discrete codes, one head per codebook."""

    codebooks: list[Annotated[int, Field(ge=0)]] | None = Field(
        None,
        min_length=1,
        description="Teacher codebooks to predict (0-based, e.g. [0, 1] for the first two RVQ levels); null = all.",
    )
    reduction: Literal["sum", "mean"] = Field(
        "mean",
        description="How per-codebook losses combine: 'mean' (default: the loss is on the scale of one codebook's "
        "cross-entropy, whatever the number of codebooks, so objective weights compare across teachers) or 'sum' "
        "(the MERT/HuBERT convention: fairseq's hubert_criterion adds the codebook losses, so 8 EnCodec codebooks "
        "weigh 8x one CQT loss at equal weights).",
    )

    @field_validator("codebooks")
    @classmethod
    def _distinct(cls, value: list[int] | None) -> list[int] | None:
        if value is not None and len(set(value)) != len(value):
            raise ValueError(f"codebooks must be distinct, got {value}")
        return value


# --------------------------------------------------------------------------- construction checks
def resolve_layer(objective: str, layer: int, num_layers: int) -> int:
    """The non-negative ``hidden_states`` index for ``layer`` (a backbone with ``num_layers``
    encoder layers returns ``num_layers + 1`` hidden states)."""
    count = num_layers + 1
    if not -count <= layer < count:
        raise ObjectiveError(
            f"objective '{objective}': layer {layer} does not exist; the backbone has {num_layers} "
            f"encoder layers, so layer must be in {-count}..{num_layers}"
        )
    return layer % count


def check_target_info(objective: str, accepts: Sequence[str], info: TargetInfo) -> None:
    """Fail early when a teacher's targets cannot feed this objective."""
    if info.kind not in accepts:
        raise ObjectiveError(f"objective '{objective}' needs {' or '.join(accepts)} targets, got {info.kind} targets")
    if info.kind == "discrete" and not info.vocab_sizes:
        raise ObjectiveError(f"objective '{objective}': discrete targets declare no codebooks (vocab_sizes is empty)")


def resolve_codebooks(objective: str, codebooks: list[int] | None, info: TargetInfo) -> list[int]:
    """The teacher codebook indices an objective predicts (all when ``codebooks`` is None)."""
    if codebooks is None:
        return list(range(info.num_codebooks))
    missing = [c for c in codebooks if c >= info.num_codebooks]
    if missing:
        raise ObjectiveError(
            f"objective '{objective}': codebooks {missing} do not exist; the teacher has "
            f"{info.num_codebooks} codebooks (0..{info.num_codebooks - 1})"
        )
    return list(codebooks)


# --------------------------------------------------------------------------- frames
@dataclass
class LossFrames:
    """The frames a loss is computed on, flattened over the batch.

    ``features``: ``[N, D]`` hidden states; ``targets``: ``[N, ...]`` the aligned target values;
    ``masked``: ``[N]`` bool, True for masked frames (the others are unmasked, non-padding ones).
    """

    features: Tensor
    targets: Tensor
    masked: Tensor


def gather_loss_frames(
    objective: str,
    out: BackboneOutput,
    targets: Targets,
    mask: Tensor,
    layer_index: int,
    include_unmasked: bool,
    target_dim: int,
) -> LossFrames:
    """Select the frames of hidden state ``layer_index`` that the loss uses.

    ``target_dim`` is the expected last dimension of ``targets.values`` (codebooks or features).

    Only masked frames are gathered unless ``include_unmasked`` (so heads run on the ~half of
    the frames that count, as in fairseq HuBERT). Padding frames are never gathered.
    """
    if layer_index >= len(out.hidden_states):
        raise ObjectiveError(
            f"objective '{objective}': reads hidden state {layer_index} but the backbone returned "
            f"{len(out.hidden_states)} hidden states"
        )
    hidden = out.hidden_states[layer_index]
    batch, frames = hidden.shape[:2]
    for what, shape in (
        ("mask", tuple(mask.shape)),
        ("padding_mask", tuple(out.padding_mask.shape)),
        ("targets", tuple(targets.values.shape[:2])),
    ):
        if shape != (batch, frames):
            raise ObjectiveError(
                f"objective '{objective}': {what} has shape {list(shape)}, "
                f"expected [batch, frames] = {[batch, frames]} "
                "(targets must be aligned to the backbone frames)"
            )
    if targets.values.dim() != 3 or targets.values.shape[-1] != target_dim:
        raise ObjectiveError(
            f"objective '{objective}': targets have shape {list(targets.values.shape)}, expected "
            f"[batch, frames, {target_dim}]"
        )
    valid = ~(out.padding_mask | targets.padding_mask.to(out.padding_mask.device))
    masked = mask.to(torch.bool) & valid
    selected = valid if include_unmasked else masked
    return LossFrames(features=hidden[selected], targets=targets.values[selected], masked=masked[selected])


def masked_mean(values: Tensor, where: Tensor) -> Tensor:
    """Mean of ``values`` (``[N]`` or ``[N, C]``) over rows where ``where`` (``[N]`` bool) holds;
    0 (still attached to the graph) when no row does."""
    weights = where.to(values.dtype)
    if values.dim() > 1:
        weights = weights.unsqueeze(-1)
    return (values * weights).sum(0) / weights.sum(0).clamp_min(1.0)


def reduce_frames(per_frame: Tensor, masked: Tensor, unmasked_weight: float) -> Tensor:
    """Masked-frame mean plus ``unmasked_weight`` x unmasked-frame mean (over dim 0)."""
    loss = masked_mean(per_frame, masked)
    if unmasked_weight > 0:
        loss = loss + unmasked_weight * masked_mean(per_frame, ~masked)
    return loss


def codebook_classification(
    logits: Sequence[Tensor],
    frames: LossFrames,
    codebooks: Sequence[int],
    unmasked_weight: float,
    reduction: Literal["sum", "mean"],
) -> ObjectiveOutput:
    """Cross-entropy + masked accuracy for one logits tensor ``[N, vocab_i]`` per codebook.

    ``frames.targets`` is ``[N, n_teacher_codebooks]``; ``codebooks[k]`` is the teacher codebook
    that ``logits[k]`` predicts. Metrics: ``acc/cb<i>`` (masked accuracy) and ``ce/cb<i>``
    (masked cross-entropy), ``i`` the teacher's codebook index.
    """
    losses: list[Tensor] = []
    metrics: dict[str, Tensor] = {}
    for codebook, cb_logits in zip(codebooks, logits, strict=True):
        codes = frames.targets[:, codebook].long()
        ce = F.cross_entropy(cb_logits.float(), codes, reduction="none")
        losses.append(reduce_frames(ce, frames.masked, unmasked_weight))
        with torch.no_grad():
            correct = (cb_logits.argmax(-1) == codes).float()
            metrics[f"acc/cb{codebook}"] = masked_mean(correct, frames.masked)
            metrics[f"ce/cb{codebook}"] = masked_mean(ce.detach(), frames.masked)
    stacked = torch.stack(losses)
    loss = stacked.sum() if reduction == "sum" else stacked.mean()
    return ObjectiveOutput(loss=loss, metrics=metrics)


# --------------------------------------------------------------------------- bases
class MaskedObjective(Objective):
    """Base of masked-frame objectives with :class:`MaskedObjectiveParams`.

    The constructor checks that the teacher's targets are of a kind in ``accepts``
    (:func:`check_target_info`) and resolves ``params.layer`` to :attr:`layer_index`
    (:func:`resolve_layer`); a subclass then builds its head. :meth:`loss_frames` gathers the
    frames its loss is computed on: the masked ones, plus the unmasked ones when
    ``params.unmasked_weight > 0``.
    """

    params: MaskedObjectiveParams

    def __init__(
        self, params: MaskedObjectiveParams, *, hidden_dim: int, num_layers: int, target_info: TargetInfo
    ) -> None:
        super().__init__(params, hidden_dim=hidden_dim, num_layers=num_layers, target_info=target_info)
        check_target_info(self.name, self.accepts, target_info)
        #: Non-negative index into the backbone's ``hidden_states``.
        self.layer_index = resolve_layer(self.name, params.layer, num_layers)

    def loss_frames(self, out: BackboneOutput, targets: Targets, mask: Tensor) -> LossFrames:
        """:func:`gather_loss_frames` of hidden state :attr:`layer_index` for this objective."""
        return gather_loss_frames(
            self.name,
            out,
            targets,
            mask,
            self.layer_index,
            include_unmasked=self.params.unmasked_weight > 0,
            target_dim=self.target_info.dim,
        )


class CodebookObjective(MaskedObjective):
    """Base of objectives that classify discrete codes, one head per codebook, with
    :class:`CodebookObjectiveParams`: the constructor also resolves ``params.codebooks`` to
    :attr:`codebooks` (teacher codebook indices) and their :attr:`vocab_sizes`;
    :meth:`classification` turns one logits tensor per codebook into the loss and metrics."""

    params: CodebookObjectiveParams

    def __init__(
        self, params: CodebookObjectiveParams, *, hidden_dim: int, num_layers: int, target_info: TargetInfo
    ) -> None:
        super().__init__(params, hidden_dim=hidden_dim, num_layers=num_layers, target_info=target_info)
        self.codebooks = resolve_codebooks(self.name, params.codebooks, target_info)
        self.vocab_sizes = [target_info.vocab_sizes[c] for c in self.codebooks]

    def classification(self, logits: Sequence[Tensor], frames: LossFrames) -> ObjectiveOutput:
        """:func:`codebook_classification` with this objective's codebooks, weight and reduction."""
        return codebook_classification(
            logits, frames, self.codebooks, self.params.unmasked_weight, self.params.reduction
        )
