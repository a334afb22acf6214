"""Finding and decoding audio files (soundfile/libsndfile: wav, flac, ogg, mp3)."""

from __future__ import annotations

import io
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

from mertlab.errors import DataError


class BadAudioError(DataError):
    """An audio file that cannot be used (it does not decode, or holds NaN/inf samples): a run
    skips it and counts it instead of stopping. ``path`` and ``reason`` say which and why."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path, self.reason = Path(path), reason
        super().__init__(f"{path}: {reason}")


#: Why a file with NaN or infinite samples is skipped.
NON_FINITE = "non-finite samples (NaN or inf)"


@dataclass(frozen=True)
class AudioFile:
    """An audio file and its native format, read once at scan time."""

    path: Path
    sample_rate: int
    num_frames: int

    @property
    def seconds(self) -> float:
        return self.num_frames / self.sample_rate


def list_audio_paths(
    path: str | Path, extensions: list[str] | tuple[str, ...], broken_links: bool = False
) -> list[Path]:
    """Audio files under a folder (recursive, sorted) or listed in a manifest file.

    ``broken_links``: also list links with an audio extension that lead nowhere (dangling, a
    loop), for a caller that skips and names them (:func:`probe` says why).

    A manifest is a text file with one audio path per line (relative paths are relative to the
    manifest's folder; blank lines and ``#`` comments are skipped).
    """
    root = Path(path)
    exts = {e.lower() if e.startswith(".") else "." + e.lower() for e in extensions}
    if root.is_dir():
        return sorted(
            p
            for p in root.rglob("*")
            if (p.is_file() or (broken_links and _broken_link(p))) and p.suffix.lower() in exts
        )
    if root.is_file():
        paths = []
        for n, line in enumerate(root.read_text().splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            p = Path(line) if Path(line).is_absolute() else root.parent / line
            if not p.is_file():
                raise DataError(f"{root}:{n}: listed audio file {line!r} does not exist")
            paths.append(p)
        return paths
    raise DataError(f"data.path: {root} is neither a folder nor a manifest file")


def sndfile_path(path: str | Path) -> str | bytes:
    """``path`` as libsndfile takes it: the text, or the file system's bytes for a name that is not
    valid in its encoding (``os.fsencode``: a Latin-1 name on a UTF-8 system), which soundfile
    cannot encode as text."""
    text = str(path)
    try:
        text.encode(sys.getfilesystemencoding())
    except UnicodeEncodeError:
        return os.fsencode(text)
    return text


def _broken_link(path: Path) -> bool:
    return path.is_symlink() and not path.exists()


def probe(path: Path) -> AudioFile:
    """Sample rate and length of ``path`` without decoding it."""
    if _broken_link(Path(path)):
        raise DataError(f"{path}: broken symbolic link (to {os.readlink(path)}: missing, or a loop of links)")
    try:
        info = sf.info(sndfile_path(path))
    except Exception as exc:  # noqa: BLE001 - libsndfile raises several types
        raise DataError(f"{path}: cannot read audio ({exc})") from None
    return AudioFile(Path(path), int(info.samplerate), int(info.frames))


def read_segment(
    file: AudioFile, start: int = 0, num_frames: int | None = None, data: bytes | None = None
) -> torch.Tensor:
    """Decode ``num_frames`` native-rate frames from ``start`` (all if None) as mono float32 ``[S]``.

    ``data``: the file's encoded bytes (e.g. read from a shard) instead of reading ``file.path``.
    """
    stop = None if num_frames is None else start + num_frames
    source = io.BytesIO(data) if data is not None else sndfile_path(file.path)
    try:
        samples, _ = sf.read(source, start=start, stop=stop, dtype="float32", always_2d=True)
    except Exception as exc:  # noqa: BLE001
        raise BadAudioError(file.path, f"cannot decode audio ({exc})") from None
    return torch.from_numpy(np.ascontiguousarray(samples.mean(axis=1)))


def check_finite(wav: torch.Tensor, file: AudioFile) -> torch.Tensor:
    """``wav`` (decoded from ``file``), or :class:`BadAudioError` when a sample is NaN or infinite."""
    if not bool(torch.isfinite(wav).all()):
        raise BadAudioError(file.path, NON_FINITE)
    return wav


def resample(wav: torch.Tensor, source_rate: int, target_rate: int) -> torch.Tensor:
    """Resample the last dimension (band-limited sinc); identity when rates match."""
    if source_rate == target_rate:
        return wav
    return AF.resample(wav, source_rate, target_rate)


def load_audio(path: str | Path, sample_rate: int) -> torch.Tensor:
    """The whole file as mono float32 at ``sample_rate``."""
    file = probe(Path(path))
    return resample(read_segment(file), file.sample_rate, sample_rate)


def write_flac(path: str | Path, audio: np.ndarray, sample_rate: int) -> Path:
    """``audio`` (mono float) as 16-bit FLAC at ``path``, written to ``<path>.part`` first (never
    scanned as audio) and renamed, so an interrupted write leaves no half file under the name."""
    path = Path(path)
    tmp = path.with_name(path.name + ".part")
    sf.write(str(tmp), np.clip(audio, -1.0, 1.0), sample_rate, subtype="PCM_16", format="FLAC")
    tmp.replace(path)
    return path
