"""The audio files of a data set: which are usable (probed, not decoded), and the
train/validation split."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from mertlab.data.audio import AudioFile, probe
from mertlab.data.dataset import too_short
from mertlab.data.skipped import SkippedFile
from mertlab.errors import DataError

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


def split_files(files: list[AudioFile], val_fraction: float) -> tuple[list[AudioFile], list[AudioFile]]:
    """Deterministic train/validation split by a hash of each file name (stable as files are added)."""
    if val_fraction <= 0 or len(files) < 2:
        return files, []

    def bucket(f: AudioFile) -> float:
        return int(hashlib.sha1(os.fsencode(f.path.name)).hexdigest()[:8], 16) / 0xFFFFFFFF

    val = [f for f in files if bucket(f) < val_fraction]
    if not val:  # tiny sets: hold out at least one file
        val = [min(files, key=bucket)]
    train = [f for f in files if f not in val]
    return train, val
