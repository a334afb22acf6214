"""A small generated *musical* data set, so the quickstart needs no download.

Each clip is a short piece: a chord progression (pad), a melody of notes with varied timbre
(additive harmonics, FM bell, plucked string), and percussion (kick, snare, hi-hat), at a
random tempo and key. Deterministic for a given seed.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf
from tqdm import tqdm

SAMPLE_RATE = 24000
MAJOR = (0, 2, 4, 5, 7, 9, 11)
MINOR = (0, 2, 3, 5, 7, 8, 10)


def _midi_hz(note: float) -> float:
    return 440.0 * 2 ** ((note - 69) / 12)


def _envelope(n: int, attack: float, decay: float, sr: int) -> np.ndarray:
    t = np.arange(n) / sr
    env = np.minimum(t / max(attack, 1e-4), 1.0) * np.exp(-t / decay)
    return env.astype(np.float32)


def _tone(freq: float, n: int, timbre: str, rng: np.random.Generator, sr: int) -> np.ndarray:
    t = np.arange(n) / sr
    if timbre == "organ":
        wave = sum(np.sin(2 * np.pi * freq * k * t) / k for k in (1, 2, 3, 4))
        env = _envelope(n, 0.02, 1.5, sr)
    elif timbre == "bell":
        index = 3.0 * np.exp(-t * 3)
        wave = np.sin(2 * np.pi * freq * t + index * np.sin(2 * np.pi * freq * 3.5 * t))
        env = _envelope(n, 0.002, 0.6, sr)
    elif timbre == "pluck":
        wave = sum(np.sin(2 * np.pi * freq * k * t) * np.exp(-t * k * 2) / k for k in range(1, 9))
        env = _envelope(n, 0.001, 0.35, sr)
    else:  # "saw": band-limited sawtooth
        top = max(1, int(sr / 2 / freq))
        wave = sum(np.sin(2 * np.pi * freq * k * t) / k for k in range(1, min(top, 12) + 1))
        env = _envelope(n, 0.01, 0.8, sr)
    detune = 1 + rng.normal(0, 0.002)
    return (wave * env * detune).astype(np.float32)


def _drum(kind: str, n: int, rng: np.random.Generator, sr: int) -> np.ndarray:
    t = np.arange(n) / sr
    if kind == "kick":
        freq = 50 + 100 * np.exp(-t * 30)
        return (np.sin(2 * np.pi * np.cumsum(freq) / sr) * np.exp(-t * 12)).astype(np.float32)
    noise = rng.standard_normal(n).astype(np.float32)
    if kind == "snare":
        return (0.6 * noise * np.exp(-t * 25) + 0.4 * np.sin(2 * np.pi * 190 * t) * np.exp(-t * 20)).astype(np.float32)
    hat = np.diff(noise, prepend=0.0)  # crude high-pass
    return (0.4 * hat * np.exp(-t * 80)).astype(np.float32)


def _add(out: np.ndarray, sound: np.ndarray, start: int, gain: float) -> None:
    end = min(len(out), start + len(sound))
    if start < end:
        out[start:end] += gain * sound[: end - start]


def render_piece(seconds: float, rng: np.random.Generator, sr: int = SAMPLE_RATE) -> np.ndarray:
    """One generated piece of ``seconds`` length, peak-normalised to 0.9."""
    n = int(seconds * sr)
    out = np.zeros(n, dtype=np.float32)
    bpm = rng.uniform(80, 150)
    beat = int(sr * 60 / bpm)
    root = int(rng.integers(40, 56))
    scale = MAJOR if rng.random() < 0.5 else MINOR
    lead, pad = rng.choice(["organ", "bell", "pluck", "saw"], size=2)
    degrees = rng.choice([0, 3, 4, 5], size=max(1, n // (4 * beat) + 1))
    for bar, degree in enumerate(degrees):  # chord pad, one chord per bar
        chord = [root + scale[(degree + k) % 7] + 12 * ((degree + k) // 7) for k in (0, 2, 4)]
        for note in chord:
            _add(out, _tone(_midi_hz(note), 4 * beat, str(pad), rng, sr), bar * 4 * beat, 0.12)
    position = 0
    while position < n:  # melody
        length = int(beat * rng.choice([0.5, 1, 1, 2]))
        if rng.random() < 0.85:
            note = root + 12 + scale[int(rng.integers(0, 7))] + 12 * int(rng.integers(0, 2))
            _add(out, _tone(_midi_hz(note), length + sr // 4, str(lead), rng, sr), position, 0.25)
        position += length
    if rng.random() < 0.8:  # drums
        for b in range(n // beat + 1):
            _add(out, _drum("kick" if b % 2 == 0 else "snare", sr // 2, rng, sr), b * beat, 0.5)
            _add(out, _drum("hat", sr // 8, rng, sr), b * beat + beat // 2, 0.3)
    out += rng.normal(0, 0.002, n).astype(np.float32)
    return (0.9 * out / max(np.abs(out).max(), 1e-6)).astype(np.float32)


def write_demo_dataset(directory: str | Path, num_clips: int = 40, seconds: float = 6.0, seed: int = 0, progress: bool = True) -> list[Path]:
    """Write ``num_clips`` generated pieces as 16-bit WAV files into ``directory``.

    Existing clips with the same names are kept (the set is deterministic), so re-running is cheap.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in tqdm(range(num_clips), desc="demo data", disable=not progress, unit="clip"):
        path = directory / f"demo_{i:03d}.wav"
        paths.append(path)
        if path.exists():
            continue
        rng = np.random.default_rng([seed, i])
        tmp = path.with_name(path.name + ".part")  # not scanned as audio if interrupted
        sf.write(str(tmp), render_piece(seconds, rng), SAMPLE_RATE, subtype="PCM_16", format="WAV")
        tmp.replace(path)
    return paths
