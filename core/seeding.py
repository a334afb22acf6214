"""Derived seeds: one reproducible random stream per (seed, step, micro-batch, rank, ...) key.

Distributed training needs randomness that *differs* where samples differ (masks of two
micro-batches, of two ranks, crops of two files) and *agrees* where all ranks must make the
same decision (which layers layer drop skips). Every such stream is seeded from a tuple of
integers through numpy's ``SeedSequence`` (a hash designed for this: nearby keys give unrelated
streams), never from a single running counter that every rank and micro-batch would share.
"""
from __future__ import annotations

import numpy as np
import torch

#: Stream names, so that e.g. the masks and the mixup of one step never share a seed.
STREAMS: dict[str, int] = {"mask": 1, "mixup": 2, "crop": 3, "layer_drop": 4, "val_mask": 5, "dropout": 6}


def derive_seed(stream: str, *key: int) -> int:
    """A 63-bit seed for ``stream`` and the integer ``key`` (e.g. seed, step, micro-batch, rank)."""
    entropy = [STREAMS[stream], *(int(k) & 0xFFFFFFFFFFFFFFFF for k in key)]
    state = np.random.SeedSequence(entropy).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


def generator(stream: str, *key: int) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded with :func:`derive_seed`."""
    return torch.Generator().manual_seed(derive_seed(stream, *key))
