"""A batch sampler whose position can be saved and restored: exact resume of the data stream.

Each epoch's order is a permutation seeded by ``(seed, epoch)`` and each item carries its crop
seed ``(seed, epoch, index)``, so what a batch holds depends only on where it is in the stream,
never on worker processes or on what ran before. The sampler's state is the position training
has *consumed* (reported by :meth:`mark_consumed`; a DataLoader prefetches ahead, so what was
handed out would be wrong), and every new iterator continues from there: the next epoch once
an epoch is used up. :class:`ResumableDataLoader` exposes the state to Lightning, which saves
it in checkpoints and restores it on ``--resume``.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader, Sampler

from mertlab.seeding import derive_seed


@dataclass(frozen=True)
class CropKey:
    """Which file (``index``) to crop, with which crop seed, for batch ``batch`` of ``epoch``."""

    index: int
    crop_seed: int
    epoch: int
    batch: int


class ResumableBatchSampler(Sampler[list[CropKey]]):
    """Shuffled batches of :class:`CropKey`, resumable at any batch of any epoch."""

    def __init__(self, size: int, batch_size: int, drop_last: bool, seed: int) -> None:
        self.size = size
        self.batch_size = batch_size
        self.drop_last = drop_last
        self.seed = seed
        self.consumed = (0, 0)  # (epoch, batches of it that training has used)

    def __len__(self) -> int:
        return self.size // self.batch_size if self.drop_last else -(-self.size // self.batch_size)

    def position(self) -> tuple[int, int]:
        """``(epoch, batch)`` where the next iterator starts."""
        epoch, batches = self.consumed
        return (epoch + 1, 0) if batches >= len(self) else (epoch, batches)

    def __iter__(self) -> Iterator[list[CropKey]]:
        epoch, start = self.position()
        generator = torch.Generator().manual_seed(derive_seed(self.seed, 0, epoch))
        order = torch.randperm(self.size, generator=generator).tolist()
        for batch in range(start, len(self)):
            indices = order[batch * self.batch_size:(batch + 1) * self.batch_size]
            yield [CropKey(i, derive_seed(self.seed, 1, epoch, i), epoch, batch) for i in indices]

    def mark_consumed(self, epoch: int, batch: int) -> None:
        """Training has used batch ``batch`` of ``epoch`` (and every one before it)."""
        self.consumed = (epoch, batch + 1)

    def state_dict(self) -> dict[str, int]:
        epoch, batch = self.position()
        return {"epoch": epoch, "batches": batch}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.consumed = (int(state["epoch"]), int(state["batches"]))


class ResumableDataLoader(DataLoader):
    """A DataLoader with a :class:`ResumableBatchSampler`: Lightning saves and restores its
    position (``state_dict``/``load_state_dict``), so ``--resume`` continues mid-epoch exactly."""

    def state_dict(self) -> dict[str, Any]:
        return self.batch_sampler.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.batch_sampler.load_state_dict(state)
