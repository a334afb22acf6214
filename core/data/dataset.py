"""Fixed-length crops of audio files, at the model's sample rate."""
from __future__ import annotations

import math
import random

import torch
from torch.utils.data import Dataset

from mertlab.data.audio import AudioFile, read_segment, resample


class CropDataset(Dataset):
    """One item per file: a crop of ``crop_seconds`` resampled to ``sample_rate``.

    Training crops start at a random position (a fresh draw each epoch); validation crops
    (``random_crops=False``) are deterministic: the middle of the file. Files shorter than the
    crop are zero-padded and their ``length`` says how many samples are real.
    Items are ``(wav [crop_samples] float32, length int)``.
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

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        file = self.files[index]
        # Read a few native frames more than needed so resampling edges don't shorten the crop.
        native = math.ceil(self.crop_seconds * file.sample_rate) + 16
        spare = max(file.num_frames - native, 0)
        start = self._rng.randint(0, spare) if self.random_crops else spare // 2
        wav = resample(read_segment(file, start, min(native, file.num_frames)), file.sample_rate, self.sample_rate)
        wav = wav[: self.crop_samples]
        length = wav.shape[0]
        if length < self.crop_samples:
            wav = torch.nn.functional.pad(wav, (0, self.crop_samples - length))
        return wav, length


def collate_crops(items: list[tuple[torch.Tensor, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack crops into ``wav [B, S]`` and ``lengths [B]``."""
    wavs, lengths = zip(*items)
    return torch.stack(wavs), torch.tensor(lengths, dtype=torch.long)


def seed_worker(worker_id: int) -> None:
    """DataLoader worker init: give each worker's dataset its own, reproducible crop stream."""
    info = torch.utils.data.get_worker_info()
    if info is not None:
        info.dataset._rng = random.Random(info.dataset.seed * 1000 + worker_id + torch.initial_seed() % 997)
