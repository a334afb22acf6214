"""Seeds derived from a run's seed and a position (epoch, step, batch, rank...), never from history.

Every random draw of a training step (crop positions, shuffling, masks, augmentations, dropout, layer
drop) is seeded from the spec's seed and *where* it happens, so a run resumed from a checkpoint
draws exactly what the uninterrupted run drew, whatever happened before (worker count,
restarts). The position names the stream first (one of the constants below: the masks and the
augmentations of one step never share a seed), then the stream's own key, e.g. ``(MASK, step,
micro-batch, clip)``.

Distributed training needs randomness that *differs* where samples differ (masks of two
micro-batches or of two clips, crops of two files) and *agrees* where all ranks must make the
same decision (which layers layer drop skips). Keys therefore hold a clip's position in the
global batch, or nothing rank-specific at all, rather than a running counter every rank and
micro-batch would share. All keys of one stream have the same length: ``SeedSequence`` does not
tell a key with trailing zeros from a shorter one.
"""

from __future__ import annotations

import zlib

import numpy as np
import torch

# Stream ids: the first position after the seed. The data streams keep their original numbers.
ORDER = 0  #: (ORDER, epoch): the epoch's permutation of the training files
CROP = 1  #: (CROP, epoch, file index): a training crop's start
LOADER = 2  #: (LOADER,): the DataLoader's own base seed
MASK = 3  #: (MASK, step, micro-batch, global clip position): a training clip's mask
VAL_MASK = 4  #: (VAL_MASK, batch, global clip position): a validation clip's mask
DROPOUT = 5  #: (DROPOUT, step, micro-batch, rank): the global RNG of a training step (dropout)
AUGMENT = 6  #: (AUGMENT, step, micro-batch, rank, name_key(alias)): an augmentation (e.g. mixup) of a device's batch
LAYER_DROP = 7  #: (LAYER_DROP, step, micro-batch): layer drop, the same on every rank


def derive_seed(seed: int, *position: int) -> int:
    """A 63-bit seed mixing ``seed`` and the non-negative ints of ``position`` (SeedSequence)."""
    entropy = [seed % 2**64, *position]
    return int(np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


def generator(seed: int, *position: int) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded with :func:`derive_seed`."""
    return torch.Generator().manual_seed(derive_seed(seed, *position))


def name_key(name: str) -> int:
    """A key position for a name (an augmentation's alias): stable across processes and runs
    (CRC-32 of its UTF-8 bytes, unlike ``hash``)."""
    return zlib.crc32(name.encode("utf-8"))
