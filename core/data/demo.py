"""A small generated *musical* data set, so the quickstart needs no download.

Each clip is a short piece: a chord progression (pad), a melody of notes with varied timbre
(:data:`TIMBRES`: organ, FM bell, plucked string, sawtooth, square, flute, strings, marimba), and percussion (kick,
snare, hi-hat), at a random tempo and key. Deterministic for a given seed.
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


def _harmonics(freq: float, t: np.ndarray, amplitudes: dict[int, float], sr: int) -> np.ndarray:
    """Sum of sine partials ``k * freq`` (weights ``amplitudes[k]``) below Nyquist."""
    wave = np.zeros_like(t)
    for k, amp in amplitudes.items():
        if k * freq < sr / 2:
            wave += amp * np.sin(2 * np.pi * freq * k * t)
    return wave


def _organ(freq, t, sr):
    return _harmonics(freq, t, {1: 1, 2: 1 / 2, 3: 1 / 3, 4: 1 / 4}, sr), (0.02, 1.5)


def _bell(freq, t, sr):  # FM bell: modulator at 3.5x the carrier, decaying index
    index = 3.0 * np.exp(-t * 3)
    return np.sin(2 * np.pi * freq * t + index * np.sin(2 * np.pi * freq * 3.5 * t)), (0.002, 0.6)


def _pluck(freq, t, sr):  # higher partials die faster, like a plucked string
    wave = sum(np.sin(2 * np.pi * freq * k * t) * np.exp(-t * k * 2) / k for k in range(1, 9) if k * freq < sr / 2)
    return wave, (0.001, 0.35)


def _saw(freq, t, sr):  # band-limited sawtooth
    return _harmonics(freq, t, {k: 1 / k for k in range(1, 13)}, sr), (0.01, 0.8)


def _square(freq, t, sr):  # odd harmonics only (clarinet-like)
    return _harmonics(freq, t, {k: 1 / k for k in range(1, 16, 2)}, sr), (0.01, 1.2)


def _flute(freq, t, sr):  # near-sine with vibrato
    vibrato = 1 + 0.006 * np.sin(2 * np.pi * 5.0 * t)
    phase = 2 * np.pi * freq * np.cumsum(vibrato) / sr
    return np.sin(phase) + 0.2 * np.sin(2 * phase) + 0.05 * np.sin(3 * phase), (0.08, 2.0)


def _strings(freq, t, sr):  # bowed: sawtooth with vibrato and a slow attack
    vibrato = 1 + 0.004 * np.sin(2 * np.pi * 6.0 * t)
    phase = 2 * np.pi * freq * np.cumsum(vibrato) / sr
    wave = sum(np.sin(k * phase) / k for k in range(1, 11) if k * freq < sr / 2)
    return wave, (0.15, 2.0)


def _marimba(freq, t, sr):  # struck bar: fundamental plus the bar's 4x and 10x modes, fast decay
    wave = np.sin(2 * np.pi * freq * t) + 0.3 * np.sin(2 * np.pi * 4 * freq * t) * np.exp(-t * 12)
    if 10 * freq < sr / 2:
        wave += 0.1 * np.sin(2 * np.pi * 10 * freq * t) * np.exp(-t * 25)
    return wave, (0.001, 0.4)


#: Generated instrument timbres: name -> (waveform, (attack, decay) in seconds) of a note.
TIMBRES = {
    "organ": _organ,
    "bell": _bell,
    "pluck": _pluck,
    "saw": _saw,
    "square": _square,
    "flute": _flute,
    "strings": _strings,
    "marimba": _marimba,
}


def _tone(freq: float, n: int, timbre: str, rng: np.random.Generator, sr: int) -> np.ndarray:
    """One note of ``n`` samples at ``freq`` Hz in a :data:`TIMBRES` timbre."""
    t = np.arange(n) / sr
    wave, (attack, decay) = TIMBRES[timbre](freq, t, sr)
    detune = 1 + rng.normal(0, 0.002)
    return (wave * _envelope(n, attack, decay, sr) * detune).astype(np.float32)


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
    lead, pad = rng.choice(list(TIMBRES), size=2)
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


def write_demo_dataset(
    directory: str | Path, num_clips: int = 40, seconds: float = 6.0, seed: int = 0, progress: bool = True
) -> list[Path]:
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
