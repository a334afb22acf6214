"""Seeds derived from a run's seed and a position (epoch, step, batch...), never from history.

Every random draw of a training step (crop positions, shuffling, masks, mixup, dropout) is
seeded from the spec's seed and *where* it happens, so a run resumed from a checkpoint draws
exactly what the uninterrupted run drew, whatever happened before (worker count, restarts).
"""
from __future__ import annotations

import numpy as np


def derive_seed(seed: int, *position: int) -> int:
    """A 63-bit seed mixing ``seed`` and the non-negative ints of ``position`` (SeedSequence)."""
    entropy = [seed % 2**64, *position]
    return int(np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))
