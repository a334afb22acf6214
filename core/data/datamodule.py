"""The Lightning DataModule built from a spec's ``data`` section."""
from __future__ import annotations

import hashlib
from pathlib import Path

import lightning as L
from torch.utils.data import DataLoader

from mertlab.data.audio import AudioFile, list_audio_paths, probe
from mertlab.data.dataset import CropDataset, EpochSampler, collate_crops, seed_worker
from mertlab.errors import DataError
from mertlab.spec import DataSpec


def scan_dataset(data: DataSpec, sample_rate: int) -> list[AudioFile]:
    """Probe every audio file of ``data.path``; errors name the field and what was expected."""
    path = Path(data.path)
    if not path.exists():
        raise DataError(f"data.path: {path} does not exist (set generate_demo: true, or run `mertlab demo-data {path}`)")
    files = [probe(p) for p in list_audio_paths(path, data.extensions)]
    files = [f for f in files if f.num_frames > 0]
    if not files:
        raise DataError(f"data.path: no audio files ({', '.join(data.extensions)}) found under {path}")
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


class AudioDataModule(L.LightningDataModule):
    """Random crops for training, deterministic crops for validation, at the backbone's rate."""

    def __init__(self, data: DataSpec, sample_rate: int, seed: int = 0) -> None:
        super().__init__()
        self.data = data
        self.sample_rate = sample_rate
        self.seed = seed
        self.train_files: list[AudioFile] = []
        self.val_files: list[AudioFile] = []

    def setup(self, stage: str | None = None) -> None:
        if self.train_files:
            return
        files = scan_dataset(self.data, self.sample_rate)
        self.train_files, self.val_files = split_files(files, self.data.val_fraction)

    def _loader(self, files: list[AudioFile], train: bool) -> DataLoader:
        dataset = CropDataset(files, self.sample_rate, self.data.crop_seconds, random_crops=train, seed=self.seed)
        # Ranks split the data through our sampler (the trainer sets use_distributed_sampler=False):
        # the same interleaved (seed, epoch) permutation in one process and on N ranks.
        trainer = self.trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        sampler = EpochSampler(dataset, num_replicas=world, rank=rank, shuffle=train, seed=self.seed, drop_last=train and len(files) >= world)
        return DataLoader(
            dataset,
            batch_size=self.data.batch_size,
            sampler=sampler,
            drop_last=train and len(sampler) > self.data.batch_size,
            num_workers=self.data.num_workers,
            collate_fn=collate_crops,
            worker_init_fn=seed_worker,
            persistent_workers=self.data.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_files, train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_files, train=False)
