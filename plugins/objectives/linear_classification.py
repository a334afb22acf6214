"""``linear_classification``: BEST-RQ style linear softmax over each codebook's codes.

A single ``Linear(D, sum(vocab_i))`` split per codebook (equivalent to one linear head per
codebook), cross-entropy on the masked frames. No projection bottleneck, no cosine: the
ablation partner of ``masked_prediction``.
"""
from __future__ import annotations

from torch import Tensor, nn

from mertlab.contracts import BackboneOutput, Objective, ObjectiveOutput, TargetInfo, Targets
from mertlab.hookspecs import hookimpl
from mertlab.masked_loss import (
    CodebookObjectiveParams,
    check_target_info,
    codebook_classification,
    gather_loss_frames,
    resolve_codebooks,
    resolve_layer,
)


class LinearClassificationParams(CodebookObjectiveParams):
    """Layer, unmasked weight, codebook subset and codebook reduction (see the base fields)."""


class LinearClassification(Objective):
    """BEST-RQ-style masked classification: linear logits per codebook, cross-entropy.

    ``loss`` = sum (or mean) over codebooks of the masked-frame cross-entropy.
    Metrics: ``acc/cb<i>`` and ``ce/cb<i>`` per codebook, as ``masked_prediction``.
    """

    name = "linear_classification"
    summary = "BEST-RQ style linear softmax per codebook, CE on masked frames (ablation of masked_prediction)"
    Params = LinearClassificationParams
    accepts = ("discrete",)

    def __init__(self, params: LinearClassificationParams, *, hidden_dim: int, num_layers: int, target_info: TargetInfo) -> None:
        super().__init__(params, hidden_dim=hidden_dim, num_layers=num_layers, target_info=target_info)
        check_target_info(self.name, self.accepts, target_info)
        self.layer_index = resolve_layer(self.name, params.layer, num_layers)
        self.codebooks = resolve_codebooks(self.name, params.codebooks, target_info)
        self.vocab_sizes = [target_info.vocab_sizes[c] for c in self.codebooks]
        self.head = nn.Linear(hidden_dim, sum(self.vocab_sizes))

    def forward(self, out: BackboneOutput, targets: Targets, mask: Tensor) -> ObjectiveOutput:
        p: LinearClassificationParams = self.params
        frames = gather_loss_frames(
            self.name, out, targets, mask, self.layer_index,
            include_unmasked=p.unmasked_weight > 0, target_dim=self.target_info.dim,
        )
        logits = self.head(frames.features).split(self.vocab_sizes, dim=-1)
        return codebook_classification(logits, frames, self.codebooks, p.unmasked_weight, p.reduction)


@hookimpl
def register_objectives(register):
    register(LinearClassification)
