"""``masked_prediction``: HuBERT/MERT masked prediction of discrete teacher codes.

Per codebook ``i`` the chosen backbone layer is projected to ``final_dim`` and compared by cosine
similarity with ``vocab_i`` learned code embeddings; ``cosine / logit_temp`` are the logits of a
cross-entropy over the masked frames. This is fairseq HuBERT's ``compute_nce`` with every code
as a negative (MERT: ``untie_final_proj``, one ``Linear(D, final_dim x n_codebooks)`` chunked per
codebook, temperature 0.1, ``final_dim`` 64 at 95M), and MERT sums the codebook losses.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from mertlab.contracts import BackboneOutput, ObjectiveOutput, TargetInfo, Targets
from mertlab.hookspecs import hookimpl
from mertlab.toolkit.masked_loss import CodebookObjective, CodebookObjectiveParams


class MaskedPredictionParams(CodebookObjectiveParams):
    final_dim: int = Field(
        64, gt=0, description="Projection size per codebook before the cosine similarity (MERT-95M: 64)."
    )
    logit_temp: float = Field(
        0.1, gt=0, description="Cosine similarities are divided by this temperature (HuBERT/MERT: 0.1)."
    )


class MaskedPrediction(CodebookObjective):
    """HuBERT/MERT-style masked prediction of discrete codes with cosine-similarity logits.

    ``loss`` = mean (or sum, ``reduction``) over the predicted codebooks of the cross-entropy
    averaged over masked, non-padding frames (+ ``unmasked_weight`` x the unmasked-frame CE).
    Metrics: ``acc/cb<i>`` masked accuracy and ``ce/cb<i>`` masked cross-entropy per codebook
    (logged as ``acc/<alias>/cb<i>``); 0 for a batch without masked frames.
    """

    name = "masked_prediction"
    summary = "HuBERT/MERT masked prediction: cosine logits vs learned code embeddings, CE per codebook"
    Params = MaskedPredictionParams
    params: MaskedPredictionParams
    accepts = ("discrete",)

    def __init__(
        self, params: MaskedPredictionParams, *, hidden_dim: int, num_layers: int, target_info: TargetInfo
    ) -> None:
        super().__init__(params, hidden_dim=hidden_dim, num_layers=num_layers, target_info=target_info)
        self.final_proj = nn.Linear(hidden_dim, params.final_dim * len(self.codebooks))
        # fairseq HuBERT / MERT: one table of all codes' embeddings, uniform(0, 1) init.
        self.label_embs = nn.ParameterList(
            nn.Parameter(torch.empty(vocab, params.final_dim).uniform_()) for vocab in self.vocab_sizes
        )

    def forward(self, out: BackboneOutput, targets: Targets, mask: Tensor) -> ObjectiveOutput:
        frames = self.loss_frames(out, targets, mask)
        projected = self.final_proj(frames.features).chunk(len(self.codebooks), dim=-1)
        # Cosine logits in float32 (as MERT's compute_nce): at temperature 0.1 half-precision
        # rounding of the similarities would be amplified tenfold.
        with torch.autocast(device_type=frames.features.device.type, enabled=False):
            logits = [
                F.normalize(proj.float(), dim=-1) @ F.normalize(emb.float(), dim=-1).T / self.params.logit_temp
                for proj, emb in zip(projected, self.label_embs, strict=True)
            ]
        return self.classification(logits, frames)


@hookimpl
def register_objectives(register):
    register(MaskedPrediction)
