"""``mixup``: MERT's in-batch mixture augmentation of the student input (teachers see the clean audio).

:func:`mixup` is MERT's in-batch mixture augmentation: each clip, with some probability, gets a
random crop of *another* clip of the batch added to it, so the student must pick out the
dominant source the teachers labelled. MERT (``inbatch_noise_augment``) adds 1-3 segments of
0.33-1 s from the other clips at full volume; here one crop as long as the shorter of the two
clips is added at a random gain in ``[0, max_gain]``, which keeps the knobs to the two of
:class:`MixupParams`.

Registered through ``register_augmentations`` like any third-party augmentation; a spec turns it
on with ``augment: {mixup: {probability: 0.5}}`` (the built-in default).
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor

from mertlab.contracts import Augmentation, Params
from mertlab.hookspecs import hookimpl


def mixup(
    wav: Tensor,
    lengths: Tensor,
    probability: float,
    max_gain: float,
    generator: torch.Generator | None = None,
) -> Tensor:
    """In-batch mixup; returns a new ``[B, S]`` tensor, ``wav`` is left untouched.

    For each clip ``i`` with ``lengths[i]`` valid samples, with chance ``probability``: pick a
    partner ``j != i`` uniformly, a crop of ``min(lengths[i], lengths[j])`` samples at a random
    offset inside ``j``'s valid samples, and add ``gain * crop`` (``gain ~ U[0, max_gain]``) at a
    random offset inside ``i``'s valid samples. Crops come from the clean batch (never from an
    already mixed clip); padding stays as it was; a batch of one clip is returned unchanged.
    All randomness comes from ``generator`` (same seed, same result).
    """
    if wav.dim() != 2:
        raise ValueError(f"mixup expects wav of shape [batch, samples], got {list(wav.shape)}")
    batch, samples = wav.shape
    if lengths.shape != (batch,):
        raise ValueError(f"mixup expects lengths of shape [{batch}], got {list(lengths.shape)}")
    if not 0.0 <= probability <= 1.0:
        raise ValueError(f"mixup probability must be in [0, 1], got {probability}")
    if max_gain < 0:
        raise ValueError(f"mixup max_gain must be >= 0, got {max_gain}")
    mixed = wav.clone()
    if batch < 2 or probability == 0.0 or max_gain == 0.0:
        return mixed

    rng_device = generator.device if generator is not None else torch.device("cpu")

    def uniform() -> list[float]:
        return torch.rand(batch, generator=generator, device=rng_device).tolist()

    # Every draw is made for every clip, so one clip's outcome never shifts another's randomness.
    apply, partner_draw, gain_draw, source_draw, dest_draw = (uniform() for _ in range(5))
    valid = lengths.clamp(min=0, max=samples).tolist()
    for i in range(batch):
        if apply[i] >= probability:
            continue
        # Uniform over the other batch-1 clips: an offset of 1..batch-1 from i.
        j = (i + 1 + min(int(partner_draw[i] * (batch - 1)), batch - 2)) % batch
        crop = min(int(valid[i]), int(valid[j]))
        if crop == 0:
            continue
        source = min(int(source_draw[i] * (valid[j] - crop + 1)), valid[j] - crop)
        dest = min(int(dest_draw[i] * (valid[i] - crop + 1)), valid[i] - crop)
        gain = gain_draw[i] * max_gain
        mixed[i, dest : dest + crop] += gain * wav[j, source : source + crop]
    return mixed


class MixupParams(Params):
    probability: float = Field(
        0.5, ge=0, le=1, description="Chance per clip of adding another clip's crop (MERT: 0.5; 0 disables)."
    )
    max_gain: float = Field(0.5, ge=0, description="The added clip is scaled by a random gain in [0, max_gain].")


class Mixup(Augmentation):
    """In-batch mixup (:func:`mixup`); pairs are drawn within the batch it is given (one device's)."""

    name = "mixup"
    summary = "MERT in-batch mixup: add a random crop of another clip of the batch at a random gain"
    Params = MixupParams

    def __call__(self, wav: Tensor, lengths: Tensor, generator: torch.Generator | None = None) -> Tensor:
        p: MixupParams = self.params
        return mixup(wav, lengths, p.probability, p.max_gain, generator)


@hookimpl
def register_augmentations(register):
    register(Mixup)
