"""Fixed-length crops of audio files, at the model's sample rate."""

from __future__ import annotations

import math
import random
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.utils.data import Dataset

from mertlab.contracts import Backbone, Teacher
from mertlab.data.audio import NON_FINITE, AudioFile, read_segment, resample
from mertlab.data.sampler import CropKey
from mertlab.data.skipped import SkippedFile
from mertlab.errors import DataError


def shortest_usable_seconds(backbone: Backbone, teachers: Iterable[Teacher] = ()) -> float:
    """How long an audio file must be to train on: the backbone's receptive field
    (:attr:`~mertlab.contracts.Backbone.min_samples`) and one frame of the backbone and of every
    teacher. Shorter files are skipped when a data set is scanned (:func:`too_short`)."""
    rates = [backbone.frame_rate, *(t.info.frame_rate for t in teachers)]
    return max(1.0 / min(rates), backbone.min_samples / backbone.sample_rate)


def too_short(file: AudioFile, min_seconds: float) -> str | None:
    """Why ``file`` is too short to train on (see :func:`shortest_usable_seconds`), or None."""
    if file.seconds >= min_seconds:
        return None
    return (
        f"too short ({file.num_frames} samples = {file.seconds:.3g} s; at least {min_seconds:.3g} s needed: the "
        "backbone's receptive field and one frame of the backbone and of every teacher)"
    )


def min_samples(min_seconds: float, sample_rate: int) -> int:
    """The samples at ``sample_rate`` a crop of a file of ``min_seconds`` has at least."""
    return max(1, math.floor(min_seconds * sample_rate + 1e-6))


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
    #: a shard's cached targets of this crop (alias -> the frames :func:`~mertlab.toolkit.align.frame_window` names)
    frames: dict[str, Tensor] | None = None


@dataclass
class AudioBatch:
    """A collated batch of crops: ``wav [B, S]``, ``lengths [B]`` valid samples, the source
    ``files`` and each crop's ``start_seconds [B]`` (float64) in its file. ``position`` is
    ``(epoch, batch)`` of a training batch in the data stream (None for validation);
    ``skipped`` the bad files left out of this batch (it may then be smaller, even empty);
    ``frames`` each crop's cached target frames when the batch comes from shards that hold them.

    Lightning moves it to the training device through :meth:`to`.
    """

    wav: Tensor
    lengths: Tensor
    files: tuple[AudioFile, ...]
    start_seconds: Tensor
    position: tuple[int, int] | None = None
    skipped: tuple[SkippedFile, ...] = ()
    frames: tuple[dict[str, Tensor], ...] | None = None

    def __len__(self) -> int:
        return self.wav.shape[0]

    def to(self, device: torch.device | str, non_blocking: bool = False) -> AudioBatch:
        # start_seconds and frames stay on the CPU: the target sources slice and pad them first.
        return AudioBatch(
            self.wav.to(device, non_blocking=non_blocking),
            self.lengths.to(device, non_blocking=non_blocking),
            self.files,
            self.start_seconds,
            self.position,
            self.skipped,
            self.frames,
        )


class CropDataset(Dataset):
    """One item per file: a :class:`Crop` of ``crop_seconds`` resampled to ``sample_rate``.

    Training crops (``random_crops=True``) indexed by a :class:`CropKey` (training batches of a
    :class:`~mertlab.data.sampler.ResumableBatchSampler`) start where the key's crop seed says: the
    same key gives the same crop, in any worker, on any rank, after any resume; the item is then
    a :class:`KeyedItem`. Indexed by an ``int``, random crops are a fresh draw each time (from the
    dataset's own seeded stream) and validation crops (``random_crops=False``) are the middle of
    the file. Files shorter than the crop
    are zero-padded and their ``length`` says how many samples are real. A file that cannot be
    decoded, holds non-finite samples or decodes to fewer than ``min_samples`` samples (the
    backbone's receptive field) gives a :class:`SkippedFile` instead of a crop.
    """

    def __init__(
        self,
        files: list[AudioFile],
        sample_rate: int,
        crop_seconds: float,
        random_crops: bool,
        seed: int = 0,
        min_samples: int = 1,
    ) -> None:
        self.files = files
        self.min_samples = min_samples
        self.sample_rate = sample_rate
        self.crop_seconds = crop_seconds
        self.crop_samples = int(round(crop_seconds * sample_rate))
        self.random_crops = random_crops
        self.seed = seed
        self._rng = random.Random(seed)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, key: CropKey | int) -> Crop | SkippedFile | KeyedItem:
        if isinstance(key, CropKey):
            return KeyedItem(key, self.crop(key.index, random.Random(key.crop_seed)))
        return self.crop(key, self._rng)

    def crop(self, index: int, rng: random.Random) -> Crop | SkippedFile:
        """The crop of file ``index`` (random start from ``rng`` when ``random_crops``)."""
        return crop_file(
            self.files[index], self.sample_rate, self.crop_seconds, self.random_crops, rng, min_samples=self.min_samples
        )


def crop_file(
    file: AudioFile,
    sample_rate: int,
    crop_seconds: float,
    random_crops: bool,
    rng: random.Random | None,
    data: bytes | None = None,
    min_samples: int = 1,
) -> Crop | SkippedFile:
    """A crop of ``crop_seconds`` of ``file`` at ``sample_rate``: a random start drawn from ``rng``
    (``random_crops``) or the middle of the file; zero-padded past the file's end. ``data``: the
    file's encoded bytes (a shard's copy) instead of reading ``file.path``. A file that cannot be
    decoded, holds non-finite samples or gives fewer than ``min_samples`` samples (its header
    promised more: damaged or truncated) gives a :class:`SkippedFile`."""
    crop_samples = int(round(crop_seconds * sample_rate))
    # Read a few native frames more than needed so resampling edges don't shorten the crop.
    native = math.ceil(crop_seconds * file.sample_rate) + 16
    spare = max(file.num_frames - native, 0)
    start = rng.randint(0, spare) if random_crops else spare // 2
    try:
        wav = resample(read_segment(file, start, min(native, file.num_frames), data), file.sample_rate, sample_rate)
    except DataError as exc:
        return SkippedFile(file.path, str(exc).removeprefix(f"{file.path}: "))
    except Exception as exc:  # noqa: BLE001 - a damaged file must never stop the loader
        return SkippedFile(file.path, f"cannot decode audio ({type(exc).__name__}: {exc})")
    if not bool(torch.isfinite(wav).all()):
        return SkippedFile(file.path, NON_FINITE)
    if wav.shape[0] == 0:
        return SkippedFile(file.path, "no samples could be decoded")
    if wav.shape[0] < min(min_samples, crop_samples):
        return SkippedFile(
            file.path,
            f"only {wav.shape[0]} samples could be decoded, fewer than the {min_samples} the backbone needs "
            "(damaged or truncated file?)",
        )
    wav = wav[:crop_samples]
    length = wav.shape[0]
    if length < crop_samples:
        wav = torch.nn.functional.pad(wav, (0, crop_samples - length))
    return Crop(wav, length, file, start / file.sample_rate)


@dataclass(frozen=True)
class KeyedItem:
    """A training item with the :class:`CropKey` it was made from (its place in the stream)."""

    key: CropKey
    item: Crop | SkippedFile


def collate_crops(items: list[Crop | SkippedFile | KeyedItem]) -> AudioBatch:
    """Stack the crops into an :class:`AudioBatch`; skipped files ride along in ``skipped``;
    keyed items give the batch its ``(epoch, batch)`` position."""
    keys = [i.key for i in items if isinstance(i, KeyedItem)]
    position = (keys[0].epoch, keys[0].batch) if keys else None
    items = [i.item if isinstance(i, KeyedItem) else i for i in items]
    crops = [c for c in items if isinstance(c, Crop)]
    skipped = tuple(c for c in items if isinstance(c, SkippedFile))
    return AudioBatch(
        wav=torch.stack([c.wav for c in crops]) if crops else torch.zeros(0, 0),
        lengths=torch.tensor([c.length for c in crops], dtype=torch.long),
        files=tuple(c.file for c in crops),
        start_seconds=torch.tensor([c.start_seconds for c in crops], dtype=torch.float64),
        position=position,
        skipped=skipped,
        frames=tuple(c.frames for c in crops) if crops and all(c.frames is not None for c in crops) else None,
    )


def seed_worker(worker_id: int) -> None:
    """DataLoader worker init: give each worker's dataset its own, reproducible stream of
    ``int``-indexed random crops (keyed crops need nothing: their key holds the seed)."""
    info = torch.utils.data.get_worker_info()
    if info is not None:
        info.dataset._rng = random.Random(info.dataset.seed * 1000 + worker_id + torch.initial_seed() % 997)
