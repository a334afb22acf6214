"""The pre-training half of the dev set: real recordings from Debian packages, decoded to 24 kHz
mono and cut into pieces (FLAC), spread evenly over each track.

A track gives ``min(length, track_seconds) // piece_seconds`` pieces, evenly spaced from its
start to its end (a long track that loops is sampled all along, not only its first minutes);
a track shorter than one piece gives none, and a near-silent piece is left out.
"""

from __future__ import annotations

import fnmatch
import glob
import io
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
import soundfile as sf
import torch
from tqdm import tqdm

from mertlab.data.audio import resample, write_flac
from mertlab.data.devset.sources import RecordingSource, missing_error
from mertlab.errors import DataError

SAMPLE_RATE = 24000
#: A piece whose RMS is below this (-60 dBFS) is silence, not music.
SILENT_RMS = 1e-3


@dataclass(frozen=True)
class Track:
    """One audio file of a source, or one member of its archive."""

    source: RecordingSource
    name: str  # file name (of the member, for an archive)
    path: Path  # the file, or the archive
    member: str | None = None

    @property
    def stem(self) -> str:
        return PurePosixPath(self.name).stem

    def open(self) -> sf.SoundFile:
        if self.member is None:
            return sf.SoundFile(str(self.path))
        with zipfile.ZipFile(self.path) as archive:
            return sf.SoundFile(io.BytesIO(archive.read(self.member)))


def list_tracks(source: RecordingSource) -> list[Track]:
    """The tracks of ``source`` in name order (its excluded files left out); a clear error when
    the package is not installed."""
    if source.archive is not None:
        archive = Path(source.archive)
        if not archive.is_file():
            raise missing_error(f"{source.package} ({archive})", [source.package])
        with zipfile.ZipFile(archive) as opened:
            members = sorted(m for m in opened.namelist() if any(fnmatch.fnmatch(m, p) for p in source.audio))
        tracks = [Track(source, PurePosixPath(m).name, archive, m) for m in members]
    else:
        files = sorted({Path(f) for pattern in source.audio for f in glob.glob(pattern)})
        tracks = [Track(source, f.name, f) for f in files if f.is_file()]
    if not tracks:
        raise missing_error(f"{source.package} (no audio at {', '.join(source.audio)})", [source.package])
    return [t for t in tracks if t.name not in source.exclude]


def piece_starts(duration: float, piece_seconds: float, track_seconds: float) -> list[float]:
    """Start times (s) of the pieces cut from a track of ``duration`` s: ``min(duration,
    track_seconds) // piece_seconds`` of them, evenly spread over the whole track."""
    count = int(min(duration, track_seconds) // piece_seconds)
    if count <= 0:
        return []
    gap = (duration - count * piece_seconds) / count
    return [gap / 2 + k * (piece_seconds + gap) for k in range(count)]


@dataclass
class SourceSummary:
    """What one package gave: tracks read, pieces written (or already there), seconds, silent pieces."""

    source: RecordingSource
    tracks: int = 0
    pieces: int = 0
    seconds: float = 0.0
    silent: int = 0
    short_tracks: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class RecordingPlan:
    """How much of each package to take: pieces of ``piece_seconds``, at most ``track_seconds``
    of each track, at most ``max_tracks`` tracks per package (None: all)."""

    piece_seconds: float = 10.0
    track_seconds: float = 180.0
    max_tracks: int | None = None


def _decode(handle: sf.SoundFile, start: float, seconds: float) -> np.ndarray:
    """``seconds`` of mono audio at :data:`SAMPLE_RATE` from ``start`` (s) of an open file."""
    rate = handle.samplerate
    handle.seek(int(round(start * rate)))
    frames = handle.read(int(np.ceil(seconds * rate)) + 16, dtype="float32", always_2d=True)
    mono = torch.from_numpy(np.ascontiguousarray(frames.mean(axis=1)))
    return resample(mono, rate, SAMPLE_RATE).numpy()[: int(round(seconds * SAMPLE_RATE))]


def write_source(
    directory: Path, source: RecordingSource, plan: RecordingPlan, bar: tqdm | None = None
) -> SourceSummary:
    """Cut ``source``'s tracks into ``directory/<package>/<track>_<k>.flac``; pieces already
    there are kept (the cut is deterministic)."""
    tracks = list_tracks(source)[: plan.max_tracks]
    folder = directory / source.package
    folder.mkdir(parents=True, exist_ok=True)
    summary = SourceSummary(source)
    for track in tracks:
        try:
            with track.open() as handle:
                starts = piece_starts(handle.frames / handle.samplerate, plan.piece_seconds, plan.track_seconds)
                if not starts:
                    summary.short_tracks.append(track.name)
                summary.tracks += 1
                for k, start in enumerate(starts):
                    path = folder / f"{track.stem}_{k:02d}.flac"
                    if not path.exists():
                        audio = _decode(handle, start, plan.piece_seconds)
                        if float(np.sqrt(np.mean(audio**2))) < SILENT_RMS:
                            summary.silent += 1
                            continue
                        write_flac(path, audio, SAMPLE_RATE)
                    summary.pieces += 1
                    summary.seconds += plan.piece_seconds
        except (sf.LibsndfileError, RuntimeError, zipfile.BadZipFile) as exc:
            raise DataError(
                f"{track.path}{f':{track.member}' if track.member else ''}: cannot decode ({exc})"
            ) from None
        if bar is not None:
            bar.update(1)
    return summary


def write_recordings(
    directory: str | Path, sources: tuple[RecordingSource, ...], plan: RecordingPlan, progress: bool = True
) -> list[SourceSummary]:
    """Every source's pieces under ``directory`` (one folder per package)."""
    directory = Path(directory)
    total = sum(len(list_tracks(s)[: plan.max_tracks]) for s in sources)  # also: every package is there
    with tqdm(total=total, desc="recordings", unit="track", disable=not progress) as bar:
        return [write_source(directory, source, plan, bar) for source in sources]
