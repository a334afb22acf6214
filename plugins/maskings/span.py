"""``span``: HuBERT/MERT span masking (fairseq ``compute_mask_indices``, static span length).

For a clip with ``L`` valid frames, ``n = int(mask_prob * L / span_length + u)`` spans
(``u ~ U[0, 1)``: stochastic rounding), at least ``min_spans``, start at distinct random frames
and each masks ``span_length`` frames. ``mask_prob`` is thus the fraction of frames the spans
would cover if they did not overlap; with overlap allowed (the HuBERT/MERT default) about
``1 - (1 - mask_prob / span_length) ** span_length`` of the frames end up masked
(~58 % for MERT's 0.8 and 5).

Differences from fairseq, on purpose:

* spans are laid over the valid frames of each clip only, so padding is never masked (fairseq
  masks a prefix of ``L`` frames, the same thing for the usual right padding);
* no batch-wide equalisation of the masked-frame count (wav2vec 2.0 needs it for negatives
  sampling; HuBERT-style losses do not, and it would cut spans short);
* a start is drawn from every frame where a full span fits, so spans never run off the end.
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor

from mertlab.contracts import Masking, Params
from mertlab.hookspecs import hookimpl


class SpanMaskingParams(Params):
    mask_prob: float = Field(
        0.8,
        ge=0,
        le=1,
        description="Spans per clip = mask_prob x valid frames / span_length (HuBERT/MERT: 0.8); "
        "~58% of frames end up masked at 0.8 and span 5 because spans overlap.",
    )
    span_length: int = Field(5, ge=1, description="Frames per span (MERT: 5 at 75 Hz; HuBERT: 10 at 50 Hz).")
    min_spans: int = Field(
        2, ge=0, description="At least this many spans per clip, when the clip has room (fairseq min_masks: 2)."
    )
    no_overlap: bool = Field(
        False,
        description="Place spans without overlap (each masks exactly span_length frames; "
        "masked fraction ~= mask_prob) instead of independently (HuBERT/MERT default).",
    )


class SpanMasking(Masking):
    """Per-clip random spans over the valid (non-padding) frames.

    Guarantees, for a clip with ``L`` valid frames and ``n`` drawn spans (``n >= min_spans``):

    * padding frames are never masked;
    * overlapping mode: ``min(n, L - span_length + 1)`` distinct starts, each span fully inside
      the clip, so at least ``min(L, span_length + min(n, L - span_length + 1) - 1)`` frames are
      masked; a clip shorter than one span is masked entirely;
    * ``no_overlap``: exactly ``min(n, L // span_length)`` disjoint spans of ``span_length``
      frames (runs of masked frames are multiples of ``span_length``; spans may touch); a clip
      shorter than one span is masked entirely when ``n >= 1``;
    * the result depends only on the padding mask and the generator state.
    """

    name = "span"
    summary = "HuBERT/MERT span masking: mask_prob 0.8, spans of 5 frames, per clip, padding-aware"
    Params = SpanMaskingParams

    def __call__(self, padding_mask: Tensor, generator: torch.Generator | None = None) -> Tensor:
        p: SpanMaskingParams = self.params
        if padding_mask.dim() != 2:
            raise ValueError(f"padding_mask must be [batch, frames], got shape {list(padding_mask.shape)}")
        rng_device = generator.device if generator is not None else torch.device("cpu")
        valid = ~padding_mask.to(device=rng_device, dtype=torch.bool)
        mask = torch.zeros_like(valid)
        rounding = torch.rand(valid.shape[0], generator=generator, device=rng_device).tolist()
        for b, valid_frames in enumerate(valid):
            positions = valid_frames.nonzero().squeeze(1)  # spans are laid over these frames
            length = positions.numel()
            if length == 0:
                continue
            num_spans = max(p.min_spans, int(p.mask_prob * length / p.span_length + rounding[b]))
            if num_spans == 0:
                continue
            starts = self._starts(length, num_spans, generator, rng_device)
            covered = (starts[:, None] + torch.arange(p.span_length, device=rng_device)).flatten()
            mask[b, positions[covered[covered < length]]] = True
        return mask.to(padding_mask.device)

    def _starts(self, length: int, num_spans: int, generator: torch.Generator | None, device: torch.device) -> Tensor:
        """Span start frames (in ``0..length-1``) for a clip of ``length`` valid frames."""
        span = self.params.span_length
        if length <= span:  # one (truncated) span covers the whole clip
            return torch.zeros(1, dtype=torch.long, device=device)
        if not self.params.no_overlap:
            candidates = length - span + 1
            return torch.randperm(candidates, generator=generator, device=device)[: min(num_spans, candidates)]
        # Disjoint spans, uniformly over arrangements: order k spans among `free` unmasked
        # frames (k + free items), then shift span j right by j * (span - 1).
        count = min(num_spans, length // span)
        free = length - count * span
        slots = torch.randperm(count + free, generator=generator, device=device)[:count].sort().values
        return slots + torch.arange(count, device=device) * (span - 1)


@hookimpl
def register_maskings(register):
    register(SpanMasking)
