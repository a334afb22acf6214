"""Streaming crops from shards (:mod:`mertlab.data.shards`) with litdata.

:class:`ShardDataset` is a litdata ``StreamingDataset``: litdata assigns chunks to ranks (from the
process group, or the ``WORLD_SIZE``/``GLOBAL_RANK`` environment) and to DataLoader workers,
shuffles chunk order and items within a window of chunks per epoch (seeded by the spec seed and
the epoch), and with several ranks drops the last items so every rank runs as many batches.
Each item becomes a :class:`~mertlab.data.dataset.Crop` cut exactly as the file dataset cuts
it (:func:`~mertlab.data.dataset.crop_file`: same crop length, padding and resampling); a
training crop's start is drawn from the seed ``(seed, CROP, epoch, item id)``, so the same item in
the same epoch gives the same crop in any worker, on any rank, after any resume.

:class:`ShardLoader` is litdata's ``StreamingDataLoader`` whose state is the position training
has *consumed*: Lightning fetches a batch ahead of the step, and the loader's own counters count
what it handed out. Each training batch carries its ``(epoch, batch)`` position; the DataModule
reports it consumed before the step (``mark_consumed``), and :meth:`ShardLoader.state_dict` is
litdata's state at that position. Lightning saves it in checkpoints and restores it on
``--resume``; litdata then replays the epoch's order from there: the resumed run reads exactly
the items (and crops) the uninterrupted run reads next, none repeated or skipped, as long as
the number of ranks, workers and the batch size are unchanged. The loader's counters and its
``restore`` flag are litdata internals, reached only through :mod:`mertlab.data.litdata_api`.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mertlab.data import litdata_api
from mertlab.data.litdata_api import LoaderCounters

litdata_api.quiet()
from litdata import StreamingDataLoader, StreamingDataset  # noqa: E402

from mertlab.data.audio import AudioFile  # noqa: E402
from mertlab.data.dataset import Crop, crop_file, min_samples, too_short  # noqa: E402
from mertlab.data.skipped import SkippedFile  # noqa: E402
from mertlab.toolkit.align import frame_window  # noqa: E402
from mertlab.toolkit.seeding import CROP, derive_seed  # noqa: E402


class ShardDataset(StreamingDataset):
    """Crops of the items of one split of shards (``location``: a folder or URL with litdata's
    index). ``frame_rates``: alias -> teacher frame rate of the targets to cut for each crop (the
    items must hold them); ``min_seconds``: shorter files are skipped (as the file dataset does)."""

    def __init__(
        self,
        location: str,
        *,
        sample_rate: int,
        crop_seconds: float,
        random_crops: bool,
        seed: int = 0,
        min_seconds: float = 0.0,
        frame_rates: Mapping[str, float] | None = None,
        shuffle: bool | None = None,
        drop_last: bool | None = None,
        cache_dir: str | None = None,
    ) -> None:
        super().__init__(
            location,
            cache_dir=cache_dir,
            shuffle=random_crops if shuffle is None else shuffle,
            drop_last=drop_last,
            seed=seed,
        )
        self.sample_rate = sample_rate
        self.crop_seconds = crop_seconds
        self.random_crops = random_crops
        self.crop_seed = seed
        self.min_seconds = min_seconds
        self.frame_rates = dict(frame_rates or {})

    def __getitem__(self, index: Any) -> Any:
        item = super().__getitem__(index)
        if isinstance(index, (slice, str)):
            return item
        return self.crop_item(item)

    def crop_item(self, item: Mapping[str, Any]) -> Crop | SkippedFile:
        """The crop of one shard item, with its targets' frames when ``frame_rates`` is set."""
        file = AudioFile(Path(item["name"]), int(item["sample_rate"]), int(item["num_frames"]))
        short = too_short(file, self.min_seconds)
        if short:
            return SkippedFile(file.path, short)
        rng = (
            random.Random(derive_seed(self.crop_seed, CROP, litdata_api.dataset_epoch(self), int(item["id"])))
            if self.random_crops
            else None
        )
        crop = crop_file(
            file,
            self.sample_rate,
            self.crop_seconds,
            self.random_crops,
            rng,
            data=bytes(item["audio"]),
            min_samples=min_samples(self.min_seconds, self.sample_rate),
        )
        if isinstance(crop, SkippedFile) or not self.frame_rates:
            return crop
        frames = {}
        for alias, rate in self.frame_rates.items():
            first, count, _ = frame_window(crop.start_seconds, crop.length / self.sample_rate, rate)
            values = np.asarray(item["targets"][alias])
            frames[alias] = torch.from_numpy(np.ascontiguousarray(values[first : first + count]))
        return Crop(crop.wav, crop.length, crop.file, crop.start_seconds, frames)


class ShardLoader(StreamingDataLoader):
    """litdata's loader, saving the position training consumed (see the module docstring).

    ``train``: batches carry their ``(epoch, batch)`` position and the state follows
    :meth:`mark_consumed`; a validation loader has no state to save.
    """

    def __init__(self, dataset: ShardDataset, *, train: bool, **kwargs: Any) -> None:
        super().__init__(dataset, **kwargs)
        self.train = train
        self._handed_out: dict[tuple[int, int], LoaderCounters] = {}  # position -> loader counters after it
        self._consumed: LoaderCounters | None = None
        self._restored: dict[str, Any] | None = None
        self._restore_pending = False  # a state was loaded and no iterator has started from it yet

    def __iter__(self) -> Any:
        if litdata_api.is_restoring(self) and not self._restore_pending:
            # litdata replays a restored state until an epoch's iterator is exhausted, but Lightning
            # stops after len(loader) batches without asking for more: the restored epoch is over.
            litdata_api.end_restore(self)
        self._restore_pending = False
        for batch in super().__iter__():
            if self.train:
                counters = litdata_api.loader_counters(self)
                position = (counters.epoch, counters.samples // self.batch_size - 1)
                self._handed_out[position] = counters
                batch.position = position
            yield batch

    def mark_consumed(self, epoch: int, batch: int) -> None:
        """Training has used batch ``batch`` of ``epoch`` (and every one before it)."""
        counters = self._handed_out.get((epoch, batch))
        if counters is None:
            return
        self._consumed = counters
        self._handed_out = {p: c for p, c in self._handed_out.items() if p > (epoch, batch)}

    def state_dict(self) -> dict[str, Any]:
        """litdata's state at the position training consumed ({} for a validation loader)."""
        if not self.train:
            return {}
        if self._consumed is None:  # nothing consumed since the start (or since the restore)
            return copy.deepcopy(self._restored) if self._restored is not None else {}
        saved, saved_epoch = litdata_api.loader_counters(self), litdata_api.dataset_epoch(self.dataset)
        litdata_api.set_loader_counters(self, self._consumed)
        litdata_api.set_dataset_epoch(self.dataset, self._consumed.epoch)
        try:
            state: dict[str, Any] = copy.deepcopy(super().state_dict())
            return state
        finally:
            litdata_api.set_loader_counters(self, saved)
            litdata_api.set_dataset_epoch(self.dataset, saved_epoch)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state`` (from :meth:`state_dict`; {} leaves the loader at its start)."""
        if not state:
            return
        self._restored = copy.deepcopy(state)
        self._consumed = None
        self._handed_out = {}
        super().load_state_dict(state)
        self._restore_pending = True
