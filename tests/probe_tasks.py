"""A labelled task whose labels are recoverable from the sound, for probe/teacher-eval tests:
the pitch class (C, Eb, Gb, A) of a harmonic tone played in one of three octaves (MIDI 36-71),
so the class is a property of the spectrum's periodicity in pitch, not one frequency."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import soundfile as sf

SR = 24000
CLASSES = {"C": 0, "Eb": 3, "Gb": 6, "A": 9}


def harmonic_tone(midi: float, seconds: float, rng: np.random.Generator, sr: int = SR) -> np.ndarray:
    """Three harmonics (1/k amplitudes, random phases), random gain, a little noise."""
    f0 = 440.0 * 2 ** ((midi - 69) / 12)
    t = np.arange(int(seconds * sr)) / sr
    wav = sum(np.sin(2 * np.pi * f0 * k * t + rng.uniform(0, 2 * np.pi)) / k for k in (1, 2, 3))
    return (0.3 * rng.uniform(0.5, 1.0) * wav + 0.01 * rng.standard_normal(t.size)).astype(np.float32)


def write_pitch_class_task(
    root: Path, clips: int = 96, seconds: float = 0.5, seed: int = 0, name: str = "pitch"
) -> Path:
    """``root/<name>.csv`` (path,label; the automatic seeded split) and its audio under ``root/<name>/``."""
    rng = np.random.default_rng(seed)
    (root / name).mkdir(parents=True, exist_ok=True)
    labels = list(CLASSES)
    rows = []
    for i in range(clips):
        label = labels[i % len(labels)]
        midi = 36 + CLASSES[label] + 12 * int(rng.integers(0, 3))
        sf.write(root / name / f"{i}.wav", harmonic_tone(midi, seconds, rng), SR)
        rows.append((f"{name}/{i}.wav", label))
    path = root / f"{name}.csv"
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(("path", "label"))
        writer.writerows(rows)
    return path
