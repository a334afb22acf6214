"""Where a spec's audio comes from: audio files, or shards. Decided once, by :func:`data_source`.

``data.path`` names either a folder or manifest of audio files (:class:`FileSource`) or shards
written by ``mertlab data shard`` (:class:`ShardSource`: their folder, or an object-store URL
litdata reads). Everything that depends on which -- the scan, the train/validation split, the
loaders and what their resumable state is, whether the demo set can be generated there, whether
the data carries the teachers' targets -- is a method of :class:`DataSource`; callers ask
:func:`data_source` for the source and never look at the path themselves.

The DataModule (:mod:`mertlab.data.datamodule`) opens a source and asks it for its loaders; the
training loop marks each training batch consumed (:class:`ConsumedPosition`), which is the
position a checkpoint saves: the resumable sampler's for files
(:mod:`mertlab.data.sampler`), the streaming loader's for shards (:mod:`mertlab.data.streaming`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar, Protocol

import torch
from torch.utils.data import DataLoader, DistributedSampler

from mertlab.data.audio import AudioFile, list_audio_paths
from mertlab.data.dataset import CropDataset, collate_crops, min_samples, seed_worker
from mertlab.data.files import check_audio_files, split_files
from mertlab.data.sampler import ResumableBatchSampler, ResumableDataLoader
from mertlab.data.shards import SPLITS, ShardTeacher, is_shard_path, read_meta, shard_teachers, split_location
from mertlab.data.skipped import SkippedFile, SkippedFiles
from mertlab.errors import DataError
from mertlab.experiment.spec import DataSpec
from mertlab.toolkit.seeding import LOADER, derive_seed


class ConsumedPosition(Protocol):
    """What a training loader's checkpointed position follows: training has used a batch."""

    def mark_consumed(self, epoch: int, batch: int) -> None:
        """Training has used batch ``batch`` of ``epoch`` (and every one before it)."""


class DataSource(ABC):
    """The audio of a spec's ``data`` section, and the loaders that read it.

    Made by :func:`data_source`; :meth:`open` checks the data (one-line :class:`DataError`) and
    reads its listing once, then the loaders can be built. :attr:`train_files` and
    :attr:`val_files` are the audio files of each split when the data is a list of files (the
    target cache and its checks work per file); a source whose items are read only through its
    loader leaves them empty.
    """

    #: ``data.generate_demo`` may write the generated demo set at ``data.path``.
    writes_demo: ClassVar[bool]
    #: The data can carry each teacher's targets (then ``data.target_cache`` is not used).
    carries_targets: ClassVar[bool]

    def __init__(self, data: DataSpec) -> None:
        self.data = data
        self.train_files: list[AudioFile] = []
        self.val_files: list[AudioFile] = []
        self.sample_rate = 0
        self.seed = 0
        self.min_seconds = 0.0
        self._opened = False

    @property
    def path(self) -> str:
        """``data.path``."""
        return self.data.path

    @abstractmethod
    def audio_files(
        self, sample_rate: int, min_seconds: float = 0.0, skipped: SkippedFiles | None = None
    ) -> list[AudioFile]:
        """Every usable audio file of the data (both splits), probed at ``sample_rate``'s rule:
        files shorter than ``min_seconds`` or unreadable are left out and recorded in ``skipped``;
        only no usable file at all is an error. A :class:`DataError` when the data is not a list of
        audio files (teacher fitting and the target cache need one)."""

    def open(self, sample_rate: int, seed: int, min_seconds: float, skipped: SkippedFiles) -> None:
        """Check the data and read its listing (once; later calls do nothing). Crops are cut at
        ``sample_rate``, drawn from ``seed``; files shorter than ``min_seconds`` are skipped and
        recorded in ``skipped``."""
        if self._opened:
            return
        self.sample_rate, self.seed, self.min_seconds = sample_rate, seed, min_seconds
        self._open(skipped)
        self._opened = True

    @abstractmethod
    def _open(self, skipped: SkippedFiles) -> None:
        """:meth:`open`'s work, with its arguments set as attributes."""

    @abstractmethod
    def has_validation(self) -> bool:
        """The data has a validation split with at least one item."""

    def exclude(self, bad: list[SkippedFile], skipped: SkippedFiles) -> None:
        """Leave the files of ``bad`` out of both splits (found unusable after the scan, e.g.
        non-finite samples found while their targets were cached) and record them in
        ``skipped``; an error when no training file is left."""
        if not bad:
            return
        for item in bad:
            skipped.add(item)
        paths = {item.path for item in bad}
        self.train_files = [f for f in self.train_files if f.path not in paths]
        self.val_files = [f for f in self.val_files if f.path not in paths]
        if not self.train_files:
            raise DataError(
                f"data.path: no usable training file left under {self.path} ({len(skipped)} skipped as "
                f"unusable, e.g. {bad[0].path}: {bad[0].reason})"
            )

    @abstractmethod
    def train_loader(self, rank: int, world: int) -> tuple[DataLoader, ConsumedPosition]:
        """Rank ``rank`` of ``world``'s training loader (random crops, reshuffled each epoch; its
        ``state_dict`` is the position Lightning checkpoints) and what to mark consumed."""

    @abstractmethod
    def val_loader(self, rank: int, world: int) -> DataLoader:
        """Rank ``rank`` of ``world``'s validation loader (the same crops every time)."""

    def held_teachers(self) -> dict[str, ShardTeacher]:
        """alias -> the teacher whose targets the data carries (none unless :attr:`carries_targets`)."""
        return {}

    def target_frame_rates(self) -> dict[str, float] | None:
        """alias -> frame rate of the targets the loaders cut for each crop, or None."""
        rates = {alias: float(t.target_info["frame_rate"]) for alias, t in self.held_teachers().items()}
        return rates or None


class FileSource(DataSource):
    """A folder (scanned recursively) or a manifest of audio files.

    The files are probed once; the validation files are chosen by a hash of their names
    (:func:`~mertlab.data.files.split_files`). The training loader's position is its resumable
    batch sampler's (:mod:`mertlab.data.sampler`); under data parallelism each rank reads its
    interleaved share of every global batch, and rank ``r`` validates files ``r, r + world...``.
    """

    writes_demo = True
    carries_targets = False

    def audio_files(
        self, sample_rate: int, min_seconds: float = 0.0, skipped: SkippedFiles | None = None
    ) -> list[AudioFile]:
        path = Path(self.path)
        if not path.exists():
            raise DataError(
                f"data.path: {path} does not exist (set generate_demo: true, or run `mertlab demo-data {path}`)"
            )
        files, bad = check_audio_files(list_audio_paths(path, self.data.extensions, broken_links=True), min_seconds)
        skipped = skipped if skipped is not None else SkippedFiles()
        for item in bad:
            skipped.add(item)
        if not files:
            found = f"; {len(bad)} skipped as unusable, e.g. {bad[0].path}: {bad[0].reason}" if bad else ""
            raise DataError(f"data.path: no audio files ({', '.join(self.data.extensions)}) found under {path}{found}")
        longest = max(f.seconds for f in files)
        if self.data.crop_seconds > longest:
            raise DataError(
                f"data.crop_seconds: {self.data.crop_seconds:g} s is longer than every file under {path} "
                f"(longest: {longest:.2f} s); lower data.crop_seconds"
            )
        return files

    def _open(self, skipped: SkippedFiles) -> None:
        files = self.audio_files(self.sample_rate, self.min_seconds, skipped)
        self.train_files, self.val_files = split_files(files, self.data.val_fraction)

    def has_validation(self) -> bool:
        return bool(self.val_files)

    def _dataset(self, files: list[AudioFile], train: bool) -> CropDataset:
        return CropDataset(
            files,
            self.sample_rate,
            self.data.crop_seconds,
            random_crops=train,
            seed=self.seed,
            min_samples=min_samples(self.min_seconds, self.sample_rate),
        )

    def _workers(self) -> dict[str, Any]:
        return {
            "num_workers": self.data.num_workers,
            "collate_fn": collate_crops,
            "worker_init_fn": seed_worker,
            "persistent_workers": self.data.num_workers > 0,
            # the loader's own seed source, so creating it never draws from the global RNG
            "generator": torch.Generator().manual_seed(derive_seed(self.seed, LOADER)),
        }

    def train_loader(self, rank: int, world: int) -> tuple[DataLoader, ConsumedPosition]:
        files = self.train_files
        global_batch = self.data.batch_size * world
        sampler = ResumableBatchSampler(
            len(files), self.data.batch_size, len(files) > global_batch, self.seed, num_replicas=world, rank=rank
        )
        return ResumableDataLoader(self._dataset(files, train=True), batch_sampler=sampler, **self._workers()), sampler

    def val_loader(self, rank: int, world: int) -> DataLoader:
        dataset = self._dataset(self.val_files, train=False)
        # Rank r validates files r, r + world, ... (padded so every rank runs as many batches).
        sampler: DistributedSampler | None = None
        if world > 1:
            sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=False)
        return DataLoader(dataset, batch_size=self.data.batch_size, shuffle=False, sampler=sampler, **self._workers())


class ShardSource(DataSource):
    """Shards written by ``mertlab data shard`` (:mod:`mertlab.data.shards`), local or in an
    object store, streamed with litdata (:mod:`mertlab.data.streaming`).

    litdata splits the items per rank and worker and shuffles them (the rank comes from the
    process group or the environment, not from the arguments of the loaders); the training
    loader's position is the one training consumed; validation reads the shards' ``val/`` split,
    chosen when they were written by the same ``val_fraction`` rule. Items are not listed:
    :attr:`train_files` and :attr:`val_files` stay empty. The shards can carry the teachers'
    targets (written with ``--with-targets``).
    """

    writes_demo = False
    carries_targets = True

    @cached_property
    def meta(self) -> dict[str, Any]:
        """The shards' metadata (``mertlab_shards.json``), read on first use."""
        return read_meta(self.path)

    def audio_files(
        self, sample_rate: int, min_seconds: float = 0.0, skipped: SkippedFiles | None = None
    ) -> list[AudioFile]:
        raise DataError(
            f"data.path: {self.path} holds shards (`mertlab data shard`); this needs a folder or manifest of audio "
            "files"
        )

    def _open(self, skipped: SkippedFiles) -> None:
        longest = float(self.meta.get("longest_seconds", 0.0))
        if self.data.crop_seconds > longest:
            raise DataError(
                f"data.crop_seconds: {self.data.crop_seconds:g} s is longer than every file in the shards at "
                f"{self.path} (longest: {longest:.2f} s); lower data.crop_seconds"
            )

    def exclude(self, bad: list[SkippedFile], skipped: SkippedFiles) -> None:
        """Record ``bad`` in ``skipped``: the loader reads items by position, none is listed to
        leave out (a bad item is skipped when its crop is cut)."""
        for item in bad:
            skipped.add(item)

    def has_validation(self) -> bool:
        return bool(self.meta["splits"].get(SPLITS[1], {}).get("files"))

    def held_teachers(self) -> dict[str, ShardTeacher]:
        return shard_teachers(self.meta)

    def _loader(self, split: str, train: bool) -> Any:
        from mertlab.data.streaming import ShardDataset, ShardLoader  # imported here: litdata loads only for shards

        dataset = ShardDataset(
            split_location(self.path, split),
            sample_rate=self.sample_rate,
            crop_seconds=self.data.crop_seconds,
            random_crops=train,
            seed=self.seed,
            min_seconds=self.min_seconds,
            frame_rates=self.target_frame_rates(),
            cache_dir=self.data.shard_cache,
        )
        # Workers are not persistent: litdata hands each epoch's assignment to fresh workers.
        return ShardLoader(
            dataset,
            train=train,
            batch_size=self.data.batch_size,
            num_workers=self.data.num_workers,
            collate_fn=collate_crops,
        )

    def train_loader(self, rank: int, world: int) -> tuple[DataLoader, ConsumedPosition]:
        loader = self._loader(SPLITS[0], True)
        return loader, loader

    def val_loader(self, rank: int, world: int) -> DataLoader:
        loader: DataLoader = self._loader(SPLITS[1], False)
        return loader


def data_source(data: DataSpec) -> DataSource:
    """The source ``data.path`` names: :class:`ShardSource` for shards (an object-store URL
    litdata reads, or a folder that ``mertlab data shard`` wrote), else :class:`FileSource`.
    The one place that tells them apart."""
    return ShardSource(data) if is_shard_path(data.path) else FileSource(data)


def scan_dataset(
    data: DataSpec, sample_rate: int, min_seconds: float = 0.0, skipped: SkippedFiles | None = None
) -> list[AudioFile]:
    """Probe every audio file of ``data.path`` (:meth:`DataSource.audio_files`); errors name the
    field and what was expected."""
    return data_source(data).audio_files(sample_rate, min_seconds, skipped)
