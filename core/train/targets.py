"""Where the training step gets its targets: the teachers on the fly, or the target cache.

Both sources return each teacher's targets for a batch of crops, already aligned to the
backbone's frames, so the training step does not know which one runs. The spec chooses:
``data.target_cache: DIR`` reads precomputed targets (``mertlab targets build SPEC``), null runs
the teachers on the clean crops (e.g. on a GPU).

Teachers run in float32 with autocast off, whatever ``trainer.precision`` is, and live in a
:class:`FrozenTeachers` container outside the trained module (see there why).
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mertlab.contracts import TargetInfo, Targets, Teacher
from mertlab.data.audio import AudioFile, resample
from mertlab.data.dataset import AudioBatch
from mertlab.data.skipped import SkippedFile
from mertlab.data.source import DataSource
from mertlab.errors import MertlabError
from mertlab.teachers.target_cache import (
    BUILD_HINT,
    DamagedEntryError,
    TeacherCache,
    Windowing,
    compute_targets_of,
    storage_dtype,
)
from mertlab.toolkit.align import align_targets, frame_window
from mertlab.toolkit.teacher_output import check_cached_values, check_targets

log = logging.getLogger(__name__)
REBUILD_HINT = "run `mertlab targets build SPEC` to recompute it"
#: Cache entries :class:`CachedTargets` keeps memory-mapped between reads (each holds a file
#: descriptor; least recently used ones are closed past this many).
OPEN_ENTRIES = 256
#: Frames checked at a time when an entry's values are checked on first use (bounds memory).
_CHECK_FRAMES = 1 << 16


@contextmanager
def teacher_alias(alias: str) -> Iterator[None]:
    """Prefix a :class:`~mertlab.errors.MertlabError` raised inside with ``teachers.<alias>: ``,
    as the target cache build names the teacher."""
    try:
        yield
    except MertlabError as exc:
        if not str(exc).startswith("teachers."):
            exc.args = (f"teachers.{alias}: {exc}", *exc.args[1:])
        raise


#: Key prefix of teacher tensors in checkpoints written while teachers were submodules of the
#: trained module; such keys are dropped on load (teachers are rebuilt from the spec).
LEGACY_TEACHER_PREFIX = "teachers."


class FrozenTeachers(Mapping[str, Teacher]):
    """A spec's teachers by alias: frozen, in eval mode, in the dtype they were built in
    (float32), and held *outside* the trained module's tree of submodules.

    :class:`~mertlab.train.module.PretrainModule` keeps them in this plain container, not as
    submodules, so nothing that wraps or converts the trained module reaches them:

    * DDP neither registers their parameters nor broadcasts their buffers at each step
      (``broadcast_buffers`` stays on for the backbone's own buffers);
    * FSDP neither shards nor all-gathers them, and its mixed-precision policy (``bf16-mixed``:
      parameter, reduction *and buffer* dtype bf16 for the root unit) never casts them;
    * Lightning's ``*-true`` precisions (``module.to(dtype)``) leave them in float32;
    * checkpoints (``state_dict``) do not hold them: a teacher is rebuilt from its spec entry,
      its fitted state (if any) read from its state file, and the fingerprints saved beside
      the weights say whether it is the same teacher on resume.

    This is more robust than keeping them as submodules and excluding them per strategy
    (FSDP ``ignored_modules``, DDP ``broadcast_buffers=False``): each strategy and precision
    plugin would need its own exclusion, and a missed one fails silently. The price is that
    they follow the batch's device themselves: :meth:`to` (called with each batch; a no-op
    when they are already there) moves them without ever changing their dtype.
    """

    def __init__(self, teachers: Mapping[str, Teacher]) -> None:
        self._teachers = dict(teachers)
        for teacher in self._teachers.values():
            teacher.requires_grad_(False).eval()
        self._device: torch.device | None = None

    def __getitem__(self, alias: str) -> Teacher:
        return self._teachers[alias]

    def __iter__(self) -> Iterator[str]:
        return iter(self._teachers)

    def __len__(self) -> int:
        return len(self._teachers)

    def to(self, device: torch.device | str) -> FrozenTeachers:
        """Move every teacher to ``device`` (their dtypes unchanged); a no-op when they are there."""
        device = torch.device(device)
        if device != self._device:
            for teacher in self._teachers.values():
                teacher.to(device=device)
            self._device = device
        return self

    def fingerprints(self) -> dict[str, dict[str, str]]:
        """``{alias: {"name", "fingerprint"}}``: what rebuilds each teacher (saved in checkpoints)."""
        return {alias: {"name": t.name, "fingerprint": t.fingerprint()} for alias, t in self._teachers.items()}

    def changed_since(self, saved: Any) -> list[str]:
        """Aliases whose teacher differs from ``saved`` (a :meth:`fingerprints` read back from a
        checkpoint), each as ``alias (name fingerprint -> now name fingerprint)``; teachers absent
        from ``saved`` (older checkpoints) are not reported."""
        if not isinstance(saved, dict):
            return []
        now = self.fingerprints()
        return [
            f"{alias} ({old.get('name')} {old.get('fingerprint')} -> now {new['name']} {new['fingerprint']})"
            for alias, old in saved.items()
            if (new := now.get(alias)) is not None and isinstance(old, dict) and old != new
        ]


def without_legacy_teacher_weights(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """``state_dict`` without the ``teachers.*`` entries older checkpoints carry."""
    return {k: v for k, v in state_dict.items() if not k.startswith(LEGACY_TEACHER_PREFIX)}


class TargetSource(ABC):
    """Each teacher's targets (by alias) of a batch, on ``num_frames`` frames at ``frame_rate``."""

    @abstractmethod
    def targets(
        self, batch: AudioBatch, frame_rate: float, num_frames: int, frame_lengths: Tensor
    ) -> dict[str, Targets]:
        """``frame_lengths``: ``[B]`` valid backbone frames per clip."""

    def check_files(self, files: Sequence[AudioFile]) -> list[SkippedFile]:
        """Raise a clear error now if targets of some of ``files`` cannot be provided later;
        return the files found unusable meanwhile (the run skips and counts them)."""
        return []


class TeacherTargets(TargetSource):
    """Runs the teachers on the clean crops (resampled from the model's ``sample_rate``)."""

    def __init__(self, teachers: Mapping[str, Teacher], sample_rate: int) -> None:
        self.teachers = teachers
        self.sample_rate = sample_rate

    @torch.no_grad()
    def targets(
        self, batch: AudioBatch, frame_rate: float, num_frames: int, frame_lengths: Tensor
    ) -> dict[str, Targets]:
        wav, lengths = batch.wav, batch.lengths
        out = {}
        with torch.autocast(device_type=wav.device.type, enabled=False):
            for alias, teacher in self.teachers.items():
                t_wav = resample(wav.float(), self.sample_rate, teacher.sample_rate)
                t_len = torch.div(lengths * teacher.sample_rate, self.sample_rate, rounding_mode="floor").clamp(
                    max=t_wav.shape[1]
                )
                with teacher_alias(alias):
                    raw = check_targets(teacher, teacher.targets(t_wav, t_len), t_wav.shape[1], t_len)
                out[alias] = align_targets(raw, frame_rate, num_frames, frame_lengths)
        return out


class CachedTargets(TargetSource):
    """Slices each crop's frames out of its file's cached targets; the teachers never run.

    A crop starting ``start_seconds`` into its file starts at source position
    ``p = start_seconds * teacher_rate``: the frames from ``floor(p)`` that start inside the crop
    are read, and :func:`align_targets` places them on the backbone's frames with the residual
    offset ``p - floor(p)`` (nearest frame for codes, interpolation for features). For crops on
    the teacher's frame grid the frames read are those the teachers would give on the fly; they
    differ only where on-the-fly targets see the crop's edges (zero padding instead of the rest
    of the file) or per-crop statistics (see :mod:`mertlab.teachers.target_cache`).
    """

    def __init__(
        self, cache_dir: str | Path, teachers: Mapping[str, Teacher], sample_rate: int, repair: bool = True
    ) -> None:
        self.sample_rate = sample_rate
        self.teachers = teachers
        self.repair = repair
        self.caches = {alias: TeacherCache(cache_dir, teacher) for alias, teacher in teachers.items()}
        self._recomputed: dict[tuple[str, Path], np.ndarray] = {}  # repairs a read-only cache could not store
        self._open: OrderedDict[tuple[str, str], np.ndarray] = OrderedDict()  # checked entries, LRU order

    def __getstate__(self) -> dict[str, Any]:  # memory maps stay in their process (e.g. ddp_spawn)
        return {**self.__dict__, "_open": OrderedDict()}

    def check_files(self, files: Sequence[AudioFile]) -> list[SkippedFile]:
        """Every file needs an entry of every teacher, except those a build found unusable
        (:meth:`~mertlab.teachers.target_cache.TeacherCache.mark_bad`: returned, to be skipped)."""
        bad: dict[Path, SkippedFile] = {}
        for cache in self.caches.values():
            for f in files:
                reason = None if f.path in bad else cache.bad_reason(f.path)
                if reason is not None:
                    bad[f.path] = SkippedFile(f.path, reason)
        files = [f for f in files if f.path not in bad]
        for alias, cache in self.caches.items():
            try:
                cache.check_manifest(required=True)
            except MertlabError as exc:
                raise MertlabError(f"teachers.{alias}: {exc}") from None
            missing = [f.path for f in files if not cache.has(f.path)]
            if missing:
                raise MertlabError(
                    f"data.target_cache: {len(missing)} of {len(files)} audio files (e.g. {missing[0]}) have no cached "
                    f"targets for teachers.{alias} ({cache.name}) in {cache.folder} (new or edited since the build); "
                    f"{BUILD_HINT}"
                )
            for f in files:  # size and header of every entry (cheap); checksums on first read
                entry = cache.entry(f.path)
                problem = cache.damage(entry, full=False)
                if problem:
                    raise MertlabError(f"{DamagedEntryError(entry, f.path, problem)}; {REBUILD_HINT}")
        return list(bad.values())

    def read(self, alias: str, file: AudioFile, device: torch.device | str = "cpu") -> np.ndarray:
        """``file``'s cached targets of teacher ``alias``; a damaged entry is recomputed by the
        teacher (``repair``; stored back when the cache is writable) or one clear error."""
        cache = self.caches[alias]
        try:
            return cache.read(file.path)
        except DamagedEntryError as exc:
            if not self.repair:
                raise MertlabError(f"{exc}; {REBUILD_HINT}") from None
            key = (alias, exc.entry)
            if key not in self._recomputed:
                log.warning("%s; recomputing it with teachers.%s", exc, alias)
                stored = (cache.read_manifest() or {}).get("windowing")
                windowing = Windowing(**stored) if isinstance(stored, dict) else Windowing()
                with torch.autocast(device_type=torch.device(device).type, enabled=False):
                    values = compute_targets_of(self.teachers[alias], file, alias, windowing, device)
                try:
                    cache.store(exc.entry, values)
                    return cache.read(file.path)
                except MertlabError as store_error:
                    log.warning("%s; using the recomputed targets for this run only", store_error)
                self._recomputed[key] = values.astype(storage_dtype(cache.info), copy=False)
            return self._recomputed[key]

    def targets(
        self, batch: AudioBatch, frame_rate: float, num_frames: int, frame_lengths: Tensor
    ) -> dict[str, Targets]:
        return sliced_targets(
            {a: c.info for a, c in self.caches.items()},
            batch,
            self.sample_rate,
            frame_rate,
            num_frames,
            frame_lengths,
            self.chunk,
        )

    def checked(self, alias: str, file: AudioFile, device: torch.device | str = "cpu") -> np.ndarray:
        """``file``'s cached targets of teacher ``alias``, opened and checked once per run.

        The first use reads the entry (checksum, :meth:`read`) and checks all its values as the
        teacher's output is checked (:func:`check_cached_values`); the memory map then stays
        open (the :data:`OPEN_ENTRIES` most recently used), so each later crop only slices it.
        The entry is looked up by the audio path: a file edited during a run keeps the targets
        it had when first read (the next run sees the edit and asks for a rebuild).
        """
        key = (alias, str(file.path))
        values = self._open.get(key)
        if values is not None:
            self._open.move_to_end(key)
            return values
        values = self.read(alias, file, device)
        origin = f"of {file.path} in {self.caches[alias].folder}"
        with teacher_alias(alias):
            for start in range(0, max(len(values), 1), _CHECK_FRAMES):
                check_cached_values(
                    self.teachers[alias], torch.from_numpy(np.array(values[start : start + _CHECK_FRAMES])), origin
                )
        self._open[key] = values
        if len(self._open) > OPEN_ENTRIES:
            self._open.popitem(last=False)
        return values

    def chunk(self, alias: str, batch: AudioBatch, clip: int, first: int, count: int) -> Tensor:
        """Frames ``first`` to ``first + count`` of clip ``clip``'s file (checked: :meth:`checked`)."""
        values = self.checked(alias, batch.files[clip], batch.wav.device)[first : first + count]
        return torch.from_numpy(np.array(values))


def sliced_targets(
    infos: Mapping[str, TargetInfo],
    batch: AudioBatch,
    sample_rate: int,
    frame_rate: float,
    num_frames: int,
    frame_lengths: Tensor,
    chunk: Any,
) -> dict[str, Targets]:
    """Each teacher's targets of a batch cut from whole-file targets (the cache's or a shard's).

    A crop starting ``start_seconds`` into its file starts at source position ``p =
    start_seconds * teacher_rate``: the frames from ``floor(p)`` that start inside the crop are
    read (:func:`~mertlab.toolkit.align.frame_window`; ``chunk(alias, batch, clip, first,
    count)`` gives them, ``[count, C]``, their values already checked) and :func:`align_targets`
    places them on the backbone's frames with the residual offset ``p - floor(p)``.
    """
    device = batch.wav.device
    seconds = (batch.lengths.cpu().double() / sample_rate).tolist()
    starts = batch.start_seconds.tolist()
    out = {}
    for alias, info in infos.items():
        chunks, offsets = [], []
        for clip, (start, duration) in enumerate(zip(starts, seconds, strict=True)):
            first, count, offset = frame_window(start, duration, info.frame_rate)
            chunks.append(chunk(alias, batch, clip, first, count))
            offsets.append(offset)
        dtype = torch.long if info.kind == "discrete" else torch.float32
        lengths = torch.tensor([c.shape[0] for c in chunks], device=device)
        same_length = all(c.shape[0] == chunks[0].shape[0] for c in chunks)
        values = torch.stack(chunks) if same_length else torch.nn.utils.rnn.pad_sequence(chunks, batch_first=True)
        values = values.to(device=device, dtype=dtype)
        raw = Targets(values=values, lengths=lengths, info=info)
        offsets_t = torch.tensor(offsets, dtype=torch.float64, device=device)
        out[alias] = align_targets(raw, frame_rate, num_frames, frame_lengths, offsets_t)
    return out


class ShardTargets(TargetSource):
    """Targets of a run on data that carries them (shards, ``data.path``, :mod:`mertlab.data.shards`).

    Shards written with ``--with-targets`` carry each teacher's whole-file targets, computed as
    the target cache computes them; the data loader cuts each crop's frames
    (:func:`~mertlab.toolkit.align.frame_window`) and they are aligned here exactly as
    :class:`CachedTargets` aligns the cache's, so a run on shards trains on the targets a run
    on the files with a target cache trains on. Every teacher of the spec must then be in the
    shards with the same fingerprint (params and fitted state). Shards without targets: the
    teachers run on the fly. The shards' metadata is read on first use (:meth:`check_files`).
    """

    def __init__(
        self, data: DataSource, cache_dir: str | None, teachers: Mapping[str, Teacher], sample_rate: int
    ) -> None:
        self.data = data
        self.data_path = data.path
        self.cache_dir = cache_dir
        self.teachers = teachers
        self.sample_rate = sample_rate
        self._source: TargetSource | None = None
        self._infos: dict[str, TargetInfo] = {}

    def resolve(self) -> TargetSource:
        if self._source is not None:
            return self._source

        held = self.data.held_teachers()
        if self.cache_dir is not None:
            raise MertlabError(
                f"data.target_cache: not used with shards (data.path {self.data_path}); the cache is keyed by audio "
                "file paths -- write the targets into the shards (`mertlab data shard SRC DST --with-targets SPEC`) "
                "and set data.target_cache: null"
            )
        if not held:
            self._source = TeacherTargets(self.teachers, self.sample_rate)
            return self._source
        for alias, teacher in self.teachers.items():
            found = held.get(alias)
            if found is None:
                raise MertlabError(
                    f"teachers.{alias}: the shards at {self.data_path} hold targets of {', '.join(sorted(held))} only; "
                    "rewrite them with `mertlab data shard SRC DST --with-targets SPEC` for this spec"
                )
            if (found.teacher, found.fingerprint) != (teacher.name, teacher.fingerprint()):
                raise MertlabError(
                    f"teachers.{alias}: the shards at {self.data_path} hold {found.teacher} targets of fingerprint "
                    f"{found.fingerprint}, this spec's teacher is {teacher.name} {teacher.fingerprint()} (other "
                    "params or "
                    "fitted state); rewrite them with `mertlab data shard SRC DST --with-targets SPEC`"
                )
            self._infos[alias] = teacher.info
        self._source = self
        return self

    def check_files(self, files: Sequence[AudioFile]) -> list[SkippedFile]:
        self.resolve()
        return []

    def targets(
        self, batch: AudioBatch, frame_rate: float, num_frames: int, frame_lengths: Tensor
    ) -> dict[str, Targets]:
        source = self.resolve()
        if source is not self:
            return source.targets(batch, frame_rate, num_frames, frame_lengths)
        if batch.frames is None:
            raise MertlabError(f"data.path: a batch from the shards at {self.data_path} carries no targets")
        return sliced_targets(self._infos, batch, self.sample_rate, frame_rate, num_frames, frame_lengths, self.chunk)

    def chunk(self, alias: str, batch: AudioBatch, clip: int, first: int, count: int) -> Tensor:
        """The frames the loader cut (``first``/``count`` are the same :func:`frame_window`'s), checked."""
        if batch.frames is None:
            raise MertlabError(f"data.path: a batch from the shards at {self.data_path} carries no targets")
        values = batch.frames[clip][alias]
        check_cached_values(
            self.teachers[alias], values, f"of {batch.files[clip].path} in the shards at {self.data_path}"
        )
        return values


def target_source(
    cache_dir: str | None, teachers: Mapping[str, Teacher], sample_rate: int, data: DataSource | None = None
) -> TargetSource:
    """The source a spec selects: the targets ``data`` carries when it can carry them (shards,
    :attr:`~mertlab.data.source.DataSource.carries_targets`); else ``data.target_cache`` (None:
    the teachers on the fly)."""
    if data is not None and data.carries_targets:
        return ShardTargets(data, cache_dir, teachers, sample_rate)
    if cache_dir is None:
        return TeacherTargets(teachers, sample_rate)
    return CachedTargets(cache_dir, teachers, sample_rate)
