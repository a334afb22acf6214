"""A batch sampler whose position can be saved and restored: exact resume of the data stream.

Each epoch's order is a permutation seeded by ``(seed, epoch)`` and each item carries its crop
seed ``(seed, epoch, index)``, so what a batch holds depends only on where it is in the stream,
never on worker processes or on what ran before. The sampler's state is the position training
has *consumed* (reported by :meth:`mark_consumed`; a DataLoader prefetches ahead, so what was
handed out would be wrong), and every new iterator continues from there: the next epoch once
an epoch is used up. :class:`ResumableDataLoader` exposes the state to Lightning, which saves
it in checkpoints and restores it on ``--resume``.

Data-parallel ranks (``num_replicas`` > 1) share that one stream: global batch ``b`` is the
``batch_size x num_replicas`` items of the epoch's order from position ``b * batch_size *
num_replicas`` on, and rank ``r`` takes every ``num_replicas``-th of them from ``r`` -- its item
``i`` is item ``i * num_replicas + r`` of the global batch. The ranks' batches together are
then the batch one process with the global batch size draws (the same files, the same crops),
and every rank is at the same batch of the same epoch, so the saved position is the same on
all ranks and resumes on any number of them that keeps the global batch size.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch.utils.data import DataLoader, Sampler

from mertlab.toolkit.seeding import CROP, ORDER, derive_seed


@dataclass(frozen=True)
class CropKey:
    """Which file (``index``) to crop, with which crop seed, for batch ``batch`` of ``epoch``."""

    index: int
    crop_seed: int
    epoch: int
    batch: int


class ResumableBatchSampler(Sampler[list[CropKey]]):
    """Shuffled batches of :class:`CropKey`, resumable at any batch of any epoch; rank ``rank``
    of ``num_replicas`` reads its interleaved share of each global batch (see the module doc)."""

    def __init__(
        self, size: int, batch_size: int, drop_last: bool, seed: int, num_replicas: int = 1, rank: int = 0
    ) -> None:
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is not in [0, {num_replicas})")
        self.size = size
        self.batch_size = batch_size
        self.drop_last = drop_last
        self.seed = seed
        self.num_replicas = num_replicas
        self.rank = rank
        self.consumed = (0, 0)  # (epoch, batches of it that training has used)

    @property
    def global_batch_size(self) -> int:
        """Items per batch over all ranks."""
        return self.batch_size * self.num_replicas

    def __len__(self) -> int:
        """Batches per epoch (the same on every rank)."""
        size, step = self.size, self.global_batch_size
        return size // step if self.drop_last else -(-size // step)

    def position(self) -> tuple[int, int]:
        """``(epoch, batch)`` where the next iterator starts."""
        epoch, batches = self.consumed
        return (epoch + 1, 0) if batches >= len(self) else (epoch, batches)

    def global_positions(self, batch: int) -> list[int]:
        """This rank's positions in the epoch's order for batch ``batch``.

        A last, partial global batch (``drop_last`` off) is padded to a multiple of
        ``num_replicas`` from the start of the order, as ``DistributedSampler`` pads, so no rank
        gets an empty batch; in one process nothing is padded.
        """
        start = batch * self.global_batch_size
        stop = min(start + self.global_batch_size, self.size)
        count = stop - start
        padded = -(-count // self.num_replicas) * self.num_replicas
        return [start + p for p in range(self.rank, padded, self.num_replicas)]

    def __iter__(self) -> Iterator[list[CropKey]]:
        epoch, start = self.position()
        generator = torch.Generator().manual_seed(derive_seed(self.seed, ORDER, epoch))
        order = torch.randperm(self.size, generator=generator).tolist()
        for batch in range(start, len(self)):
            indices = [order[p % self.size] for p in self.global_positions(batch)]
            yield [CropKey(i, derive_seed(self.seed, CROP, epoch, i), epoch, batch) for i in indices]

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
        return cast(ResumableBatchSampler, self.batch_sampler).state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        cast(ResumableBatchSampler, self.batch_sampler).load_state_dict(state)
