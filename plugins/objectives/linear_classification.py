"""``linear_classification``: BEST-RQ style linear softmax over each codebook's codes.

A single ``Linear(D, sum(vocab_i))`` split per codebook (equivalent to one linear head per
codebook), cross-entropy on the masked frames. No projection bottleneck, no cosine: the
ablation partner of ``masked_prediction``.
"""

from __future__ import annotations

from torch import Tensor, nn

from mertlab.contracts import BackboneOutput, ObjectiveOutput, TargetInfo, Targets
from mertlab.hookspecs import hookimpl
from mertlab.toolkit.masked_loss import CodebookObjective, CodebookObjectiveParams


class LinearClassificationParams(CodebookObjectiveParams):
    """Layer, unmasked weight, codebook subset and codebook reduction (see the base fields)."""


class LinearClassification(CodebookObjective):
    """BEST-RQ-style masked classification: linear logits per codebook, cross-entropy.

    ``loss`` = sum (or mean) over codebooks of the masked-frame cross-entropy.
    Metrics: ``acc/cb<i>`` and ``ce/cb<i>`` per codebook, as ``masked_prediction``.
    """

    name = "linear_classification"
    summary = "BEST-RQ style linear softmax per codebook, CE on masked frames (ablation of masked_prediction)"
    Params = LinearClassificationParams
    accepts = ("discrete",)

    def __init__(
        self, params: LinearClassificationParams, *, hidden_dim: int, num_layers: int, target_info: TargetInfo
    ) -> None:
        super().__init__(params, hidden_dim=hidden_dim, num_layers=num_layers, target_info=target_info)
        self.head = nn.Linear(hidden_dim, sum(self.vocab_sizes))

    def forward(self, out: BackboneOutput, targets: Targets, mask: Tensor) -> ObjectiveOutput:
        frames = self.loss_frames(out, targets, mask)
        return self.classification(self.head(frames.features).split(self.vocab_sizes, dim=-1), frames)


@hookimpl
def register_objectives(register):
    register(LinearClassification)
