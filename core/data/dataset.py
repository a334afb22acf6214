"""Fixed-length crops of audio files, at the model's sample rate."""
from __future__ import annotations

import math
import random
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.utils.data import Dataset, DistributedSampler

from mertlab.data.audio import AudioFile, read_segment, resample
from mertlab.seeding import derive_seed


@dataclass(frozen=True)
class Crop:
    """One item of a :class:`CropDataset`: the audio and where in which file it came from.

    ``wav``: ``[crop_samples]`` float32 at the model's rate, zero-padded past ``length`` real
    samples; ``start_seconds``: where the crop starts in ``file`` (the target cache slices the
    file's precomputed targets there).
    """

    wav: Tensor
    length: int
    file: AudioFile
    start_seconds: float


@dataclass
class AudioBatch:
    """A collated batch of crops: ``wav [B, S]``, ``lengths [B]`` valid samples, the source
    ``files`` and each crop's ``start_seconds [B]`` (float64) in its file.

    Lightning moves it to the training device through :meth:`to`.
    """

    wav: Tensor
    lengths: Tensor
    files: tuple[AudioFile, ...]
    start_seconds: Tensor

    def __len__(self) -> int:
        return self.wav.shape[0]

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "AudioBatch":
        # start_seconds stays on the CPU: only the target cache reads it, to index numpy arrays.
        return AudioBatch(
            self.wav.to(device, non_blocking=non_blocking), self.lengths.to(device, non_blocking=non_blocking),
            self.files, self.start_seconds,
        )


class CropDataset(Dataset):
    """One item per file: a :class:`Crop` of ``crop_seconds`` resampled to ``sample_rate``.

    Training crops start at a random position (a fresh draw each epoch); validation crops
    (``random_crops=False``) are deterministic: the middle of the file. Files shorter than the
    crop are zero-padded and their ``length`` says how many samples are real.

    Indexed by ``(epoch, index)`` (what :class:`EpochSampler` yields), a training crop's start
    is drawn from (seed, epoch, file index) alone: different for every file and epoch, yet the
    same whichever rank or DataLoader worker reads it -- so N ranks see exactly the crops of one
    process, and a resumed epoch the crops of the interrupted one. A plain integer index draws
    from the dataset's own stream instead (a fresh crop per call).
    """

    def __init__(self, files: list[AudioFile], sample_rate: int, crop_seconds: float, random_crops: bool, seed: int = 0) -> None:
        self.files = files
        self.sample_rate = sample_rate
        self.crop_seconds = crop_seconds
        self.crop_samples = int(round(crop_seconds * sample_rate))
        self.random_crops = random_crops
        self.seed = seed
        self._rng = random.Random(seed)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, key: int | tuple[int, int]) -> Crop:
        if isinstance(key, tuple):
            epoch, index = key
            rng = random.Random(derive_seed("crop", self.seed, epoch, index))
        else:
            index, rng = key, self._rng
        file = self.files[index]
        # Read a few native frames more than needed so resampling edges don't shorten the crop.
        native = math.ceil(self.crop_seconds * file.sample_rate) + 16
        spare = max(file.num_frames - native, 0)
        start = rng.randint(0, spare) if self.random_crops else spare // 2
        wav = resample(read_segment(file, start, min(native, file.num_frames)), file.sample_rate, self.sample_rate)
        wav = wav[: self.crop_samples]
        length = wav.shape[0]
        if length < self.crop_samples:
            wav = torch.nn.functional.pad(wav, (0, self.crop_samples - length))
        return Crop(wav, length, file, start / file.sample_rate)


class EpochSampler(DistributedSampler):
    """:class:`~torch.utils.data.DistributedSampler` yielding ``(epoch, index)`` keys.

    Rank ``r`` of ``world`` takes every ``world``-th index of a (seed, epoch) permutation, so
    the ranks' batches together are the batch one process would draw; Lightning calls
    :meth:`set_epoch` at each epoch. The epoch in the key seeds the crop (see
    :class:`CropDataset`).
    """

    def __iter__(self) -> Iterator[tuple[int, int]]:  # type: ignore[override]
        return ((self.epoch, index) for index in super().__iter__())


def collate_crops(items: list[Crop]) -> AudioBatch:
    """Stack crops into an :class:`AudioBatch`."""
    return AudioBatch(
        wav=torch.stack([c.wav for c in items]),
        lengths=torch.tensor([c.length for c in items], dtype=torch.long),
        files=tuple(c.file for c in items),
        start_seconds=torch.tensor([c.start_seconds for c in items], dtype=torch.float64),
    )


def seed_worker(worker_id: int) -> None:
    """DataLoader worker init: give each worker's dataset its own, reproducible crop stream."""
    info = torch.utils.data.get_worker_info()
    if info is not None:
        info.dataset._rng = random.Random(info.dataset.seed * 1000 + worker_id + torch.initial_seed() % 997)
