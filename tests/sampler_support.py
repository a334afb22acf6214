"""Reading a :class:`~mertlab.data.sampler.ResumableBatchSampler` the way training does, for the
resume and distributed tests."""

from __future__ import annotations

from mertlab.data.sampler import CropKey, ResumableBatchSampler


def stream(sampler: ResumableBatchSampler, batches: int) -> list[list[CropKey]]:
    """``batches`` batches as training consumes them: a new iterator per epoch, as Lightning makes."""
    out: list[list[CropKey]] = []
    while len(out) < batches:
        for batch in sampler:
            sampler.mark_consumed(batch[0].epoch, batch[0].batch)
            out.append(batch)
            if len(out) == batches:
                break
    return out
