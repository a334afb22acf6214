"""The Lightning DataModule built from a spec's ``data`` section."""

from __future__ import annotations

import lightning as L
from torch.utils.data import DataLoader

from mertlab.data.audio import AudioFile
from mertlab.data.dataset import AudioBatch
from mertlab.data.skipped import SkippedFile, SkippedFiles
from mertlab.data.source import ConsumedPosition, DataSource, data_source
from mertlab.experiment.spec import DataSpec


class AudioDataModule(L.LightningDataModule):
    """Random crops for training, deterministic crops for validation, at the backbone's rate.

    The data is a :class:`~mertlab.data.source.DataSource` (:func:`~mertlab.data.source.data_source`
    chooses audio files or shards from ``data.path``); the module asks it for the loaders and
    knows nothing of which it is. The training stream is resumable: Lightning saves its position
    in checkpoints, the position training *consumed* (each training batch is marked consumed
    before its step). Under data parallelism each rank reads its own share of every global batch
    (and of the validation data); the trainer runs with ``use_distributed_sampler=False`` so that
    Lightning keeps the sources' own splitting. Bad files are skipped and recorded in
    :attr:`skipped`, at scan time (``min_seconds``: shorter files are skipped) and when a crop
    cannot be decoded.
    """

    def __init__(self, data: DataSpec, sample_rate: int, seed: int = 0, min_seconds: float = 0.0) -> None:
        super().__init__()
        self.data = data
        self.sample_rate = sample_rate
        self.seed = seed
        self.min_seconds = min_seconds
        #: where the audio comes from (files or shards), decided once from ``data.path``
        self.source: DataSource = data_source(data)
        self.skipped = SkippedFiles()
        self._consumed: ConsumedPosition | None = None

    @property
    def train_files(self) -> list[AudioFile]:
        """The training files (empty when the source lists none, e.g. shards)."""
        return self.source.train_files

    @property
    def val_files(self) -> list[AudioFile]:
        """The validation files (empty when the source lists none, e.g. shards)."""
        return self.source.val_files

    def setup(self, stage: str | None = None) -> None:
        self.source.open(self.sample_rate, self.seed, self.min_seconds, self.skipped)

    def exclude(self, bad: list[SkippedFile]) -> None:
        """Leave the files of ``bad`` out of both splits and record them as skipped (see
        :meth:`~mertlab.data.source.DataSource.exclude`)."""
        self.source.exclude(bad, self.skipped)

    def has_validation(self) -> bool:
        """There is validation data."""
        return self.source.has_validation()

    def distributed_position(self) -> tuple[int, int]:
        """``(rank, world size)`` of this process; ``(0, 1)`` outside a Trainer."""
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def train_dataloader(self) -> DataLoader:
        loader, self._consumed = self.source.train_loader(*self.distributed_position())
        return loader

    def val_dataloader(self) -> DataLoader:
        return self.source.val_loader(*self.distributed_position())

    def on_before_batch_transfer(self, batch: AudioBatch, dataloader_idx: int) -> AudioBatch:
        """Record the batch's skipped files; mark a training batch as consumed (its position)."""
        for item in batch.skipped:
            self.skipped.add(item)
        if batch.position is not None and self._consumed is not None:
            self._consumed.mark_consumed(*batch.position)
        return batch
