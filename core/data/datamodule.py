"""The Lightning DataModule built from a spec's ``data`` section."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, DistributedSampler

from mertlab.data.audio import AudioFile, list_audio_paths, probe
from mertlab.data.dataset import AudioBatch, CropDataset, collate_crops, min_samples, seed_worker, too_short
from mertlab.data.sampler import ResumableBatchSampler, ResumableDataLoader
from mertlab.data.shards import SPLITS, is_shard_path, read_meta, split_location
from mertlab.data.skipped import SkippedFile, SkippedFiles
from mertlab.errors import DataError
from mertlab.experiment.spec import DataSpec
from mertlab.toolkit.seeding import LOADER, derive_seed

#: Sample rates outside this range are treated as a damaged header (resampling them is not sensible).
SAMPLE_RATE_RANGE = (1000, 768_000)


def check_audio_files(paths: list[Path], min_seconds: float = 0.0) -> tuple[list[AudioFile], list[SkippedFile]]:
    """Probe each file (header only, no decoding): the usable ones, and the skipped ones with why
    (unreadable or not audio, no samples (empty or header-only), an implausible sample rate,
    shorter than ``min_seconds``)."""
    files, skipped = [], []
    for path in paths:
        try:
            file = probe(path)
        except DataError as exc:
            skipped.append(SkippedFile(path, str(exc).removeprefix(f"{path}: ")))
            continue
        problem = file_problem(file, min_seconds)
        if problem:
            skipped.append(SkippedFile(path, problem))
        else:
            files.append(file)
    return files, skipped


def file_problem(file: AudioFile, min_seconds: float = 0.0) -> str | None:
    """Why a probed file is unusable (no samples, implausible rate, too short), or None."""
    low, high = SAMPLE_RATE_RANGE
    if file.num_frames <= 0:
        return "no audio samples (empty or header-only file)"
    if not low <= file.sample_rate <= high:
        return f"implausible sample rate {file.sample_rate} Hz (damaged header?)"
    return too_short(file, min_seconds)


def scan_dataset(
    data: DataSpec, sample_rate: int, min_seconds: float = 0.0, skipped: SkippedFiles | None = None
) -> list[AudioFile]:
    """Probe every audio file of ``data.path``; errors name the field and what was expected.

    Bad files are left out, each recorded (and logged once) in ``skipped`` (see
    :func:`check_audio_files`); only a data set without any usable file is an error.
    """
    if is_shard_path(data.path):
        raise DataError(
            f"data.path: {data.path} holds shards (`mertlab data shard`); this needs a folder or manifest of audio files"
        )
    path = Path(data.path)
    if not path.exists():
        raise DataError(
            f"data.path: {path} does not exist (set generate_demo: true, or run `mertlab demo-data {path}`)"
        )
    files, bad = check_audio_files(list_audio_paths(path, data.extensions), min_seconds)
    skipped = skipped if skipped is not None else SkippedFiles()
    for item in bad:
        skipped.add(item)
    if not files:
        found = f"; {len(bad)} skipped as unusable, e.g. {bad[0].path}: {bad[0].reason}" if bad else ""
        raise DataError(f"data.path: no audio files ({', '.join(data.extensions)}) found under {path}{found}")
    longest = max(f.seconds for f in files)
    if data.crop_seconds > longest:
        raise DataError(
            f"data.crop_seconds: {data.crop_seconds:g} s is longer than every file under {path} "
            f"(longest: {longest:.2f} s); lower data.crop_seconds"
        )
    return files


def split_files(files: list[AudioFile], val_fraction: float) -> tuple[list[AudioFile], list[AudioFile]]:
    """Deterministic train/validation split by a hash of each file name (stable as files are added)."""
    if val_fraction <= 0 or len(files) < 2:
        return files, []

    def bucket(f: AudioFile) -> float:
        return int(hashlib.sha1(f.path.name.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF

    val = [f for f in files if bucket(f) < val_fraction]
    if not val:  # tiny sets: hold out at least one file
        val = [min(files, key=bucket)]
    train = [f for f in files if f not in val]
    return train, val


def check_shards(data: DataSpec) -> dict[str, Any]:
    """The metadata of the shards at ``data.path``; the crop must fit the longest file."""
    meta = read_meta(data.path)
    longest = float(meta.get("longest_seconds", 0.0))
    if data.crop_seconds > longest:
        raise DataError(
            f"data.crop_seconds: {data.crop_seconds:g} s is longer than every file in the shards at {data.path} "
            f"(longest: {longest:.2f} s); lower data.crop_seconds"
        )
    return meta


class AudioDataModule(L.LightningDataModule):
    """Random crops for training, deterministic crops for validation, at the backbone's rate.

    The training stream is resumable (:mod:`mertlab.data.sampler`): Lightning saves its
    position in checkpoints. Under data parallelism each rank reads its interleaved share of
    every global batch (and of the validation files) through samplers that know the rank; the
    trainer runs with ``use_distributed_sampler=False`` so that Lightning keeps them. Bad files
    are skipped and recorded in :attr:`skipped`, at scan time (``min_seconds``: shorter files
    are skipped) and when a crop cannot be decoded.

    When ``data.path`` holds shards (:func:`~mertlab.data.shards.is_shard_path`), both streams
    come from them instead (:mod:`mertlab.data.streaming`): litdata splits them per rank and
    worker and shuffles them, the training loader saves its consumed position in checkpoints, and
    validation reads the shards' ``val/`` split (chosen when they were written, by the same
    ``val_fraction`` rule); :attr:`train_files` and :attr:`val_files` then stay empty.
    """

    def __init__(self, data: DataSpec, sample_rate: int, seed: int = 0, min_seconds: float = 0.0) -> None:
        super().__init__()
        self.data = data
        self.sample_rate = sample_rate
        self.seed = seed
        self.min_seconds = min_seconds
        self.train_files: list[AudioFile] = []
        self.val_files: list[AudioFile] = []
        self.skipped = SkippedFiles()
        self._train_sampler: ResumableBatchSampler | Any = None  # or a ShardLoader: both take mark_consumed
        #: the shards' metadata when data.path holds shards (:mod:`mertlab.data.shards`), else None
        self.shard_meta: dict[str, Any] | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.train_files or self.shard_meta is not None:
            return
        if is_shard_path(self.data.path):
            self.shard_meta = check_shards(self.data)
            return
        files = scan_dataset(self.data, self.sample_rate, self.min_seconds, self.skipped)
        self.train_files, self.val_files = split_files(files, self.data.val_fraction)

    def exclude(self, bad: list[SkippedFile]) -> None:
        """Leave the files of ``bad`` out of both splits (found unusable after the scan, e.g.
        non-finite samples found while their targets were cached) and record them as skipped;
        an error when no training file is left."""
        if not bad:
            return
        for item in bad:
            self.skipped.add(item)
        paths = {item.path for item in bad}
        self.train_files = [f for f in self.train_files if f.path not in paths]
        self.val_files = [f for f in self.val_files if f.path not in paths]
        if not self.train_files:
            raise DataError(
                f"data.path: no usable training file left under {self.data.path} ({len(self.skipped)} skipped as "
                f"unusable, e.g. {bad[0].path}: {bad[0].reason})"
            )

    def has_validation(self) -> bool:
        """There are validation files (or a validation split of the shards)."""
        if self.shard_meta is not None:
            return bool(self.shard_meta["splits"].get("val", {}).get("files"))
        return bool(self.val_files)

    def _shard_loader(self, split: str, train: bool, frame_rates: dict[str, float] | None) -> DataLoader:
        from mertlab.data.streaming import ShardDataset, ShardLoader

        dataset = ShardDataset(
            split_location(self.data.path, split),
            sample_rate=self.sample_rate,
            crop_seconds=self.data.crop_seconds,
            random_crops=train,
            seed=self.seed,
            min_seconds=self.min_seconds,
            frame_rates=frame_rates,
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

    def shard_frame_rates(self) -> dict[str, float] | None:
        """alias -> frame rate of the targets the shards hold (cut for each crop), or None."""
        teachers = (self.shard_meta or {}).get("teachers") or {}
        return {alias: float(t["target_info"]["frame_rate"]) for alias, t in teachers.items()} or None

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

    def distributed_position(self) -> tuple[int, int]:
        """``(rank, world size)`` of this process; ``(0, 1)`` outside a Trainer."""
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def train_dataloader(self) -> DataLoader:
        if self.shard_meta is not None:
            self._train_sampler = self._shard_loader(SPLITS[0], True, self.shard_frame_rates())
            return self._train_sampler
        files = self.train_files
        rank, world = self.distributed_position()
        global_batch = self.data.batch_size * world
        sampler = ResumableBatchSampler(
            len(files), self.data.batch_size, len(files) > global_batch, self.seed, num_replicas=world, rank=rank
        )
        self._train_sampler = sampler
        return ResumableDataLoader(self._dataset(files, train=True), batch_sampler=sampler, **self._workers())

    def val_dataloader(self) -> DataLoader:
        if self.shard_meta is not None:
            return self._shard_loader(SPLITS[1], False, self.shard_frame_rates())
        dataset = self._dataset(self.val_files, train=False)
        rank, world = self.distributed_position()
        # Rank r validates files r, r + world, ... (padded so every rank runs as many batches).
        sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=False) if world > 1 else None
        return DataLoader(dataset, batch_size=self.data.batch_size, shuffle=False, sampler=sampler, **self._workers())

    def on_before_batch_transfer(self, batch: AudioBatch, dataloader_idx: int) -> AudioBatch:
        """Record the batch's skipped files; mark a training batch as consumed (its position)."""
        for item in batch.skipped:
            self.skipped.add(item)
        if batch.position is not None and self._train_sampler is not None:
            self._train_sampler.mark_consumed(*batch.position)
        return batch
