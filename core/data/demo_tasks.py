"""Labelled probe tasks from the demo synthesiser, so "does pre-training learn music?" has an
answer out of the box (``mertlab demo-data`` writes them next to the pre-training clips).

Four tasks, each a folder of FLAC clips and a CSV in the format ``mertlab probe`` reads
(``path,label,split`` plus descriptive columns), generated with their own seeds so no clip is
a pre-training clip:

========== ============================================================== ==================
task       content                                                        label
========== ============================================================== ==================
pitch      one note, 1 s, any of the 8 timbres, MIDI 48-71 (C3-B4), in a mix  MIDI number (24 classes)
timbre     one note, 1 s, MIDI 45-80                                      timbre name (8 classes)
key        a 4-chord progression with a melody in the scale, 3 s, in a mix e.g. ``D minor`` (24 classes)
tempo      a drum pattern (plus bass notes), 3 s, 70-170 BPM               BPM (regression)
========== ============================================================== ==================

"In a mix": drums at an unrelated tempo and broadband noise at random levels are added, as
around the labelled content of a real recording; a spectrum's mean alone does not give the
label away. Splits are fixed in the CSV (per class 2/3 train, 1/6 valid, 1/6 test for classification; the
same fractions for tempo). Everything is deterministic for a given seed.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from mertlab.data.audio import write_flac
from mertlab.data.demo import MAJOR, TIMBRES, _add, _drum, _midi_hz, _tone
from mertlab.errors import MertlabError

#: Task clips are written at 16 kHz (small FLAC files; probing resamples to the backbone's rate).
SAMPLE_RATE = 16000

PITCH_NOTES = tuple(range(48, 72))  # C3..B4
PITCH_CLASS_NAMES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")
KEYS = tuple(f"{PITCH_CLASS_NAMES[pc]} {mode}" for mode in ("major", "minor") for pc in range(12))
#: Scale degrees (0-based) of the chord progressions a key clip may use (I-IV-V-I, I-vi-IV-V, ...).
PROGRESSIONS = ((0, 3, 4, 0), (0, 5, 3, 4), (0, 3, 0, 4), (0, 4, 5, 3), (0, 1, 4, 0))
TEMPO_RANGE = (70.0, 170.0)
#: Minor keys use the harmonic minor scale (raised 7th: a major V chord), so a minor key's notes
#: differ from its relative major's, as in common-practice music.
HARMONIC_MINOR = (0, 2, 3, 5, 7, 8, 11)


@dataclass(frozen=True)
class Example:
    """One generated clip: its audio, label and descriptive columns for the CSV."""

    audio: np.ndarray
    label: str
    info: dict[str, str]


def _with_background(out: np.ndarray, rng: np.random.Generator, sr: int) -> np.ndarray:
    """Add what real recordings have around the labelled content: a drum groove at an unrelated
    tempo and broadband noise, each at a random level, so a feature must find the label's content
    inside a mix (MERT's mixup asks the same of the student)."""
    beat = int(sr * 60 / rng.uniform(70, 170))
    drums = np.zeros_like(out)
    for b, start in enumerate(range(int(rng.integers(0, beat)), len(out), beat)):
        _add(drums, _drum("kick" if b % 2 == 0 else "snare", sr // 3, rng, sr), start, 1.0)
        _add(drums, _drum("hat", sr // 10, rng, sr), start + beat // 2, 0.6)
    level = float(np.sqrt(np.mean(out**2))) + 1e-6
    drums *= rng.uniform(0.3, 1.0) * level / (float(np.sqrt(np.mean(drums**2))) + 1e-6)
    noise = rng.standard_normal(len(out)).astype(np.float32) * level * rng.uniform(0.05, 0.3)
    return out + drums + noise


def _normalise(out: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    peak = rng.uniform(0.5, 0.9)  # loudness varies, so it is no shortcut to any label
    return (peak * out / max(float(np.abs(out).max()), 1e-6)).astype(np.float32)


def pitch_example(index: int, rng: np.random.Generator, sr: int = SAMPLE_RATE) -> Example:
    note = PITCH_NOTES[index % len(PITCH_NOTES)]
    timbre = str(rng.choice(list(TIMBRES)))
    n = sr
    out = np.zeros(n, dtype=np.float32)
    _add(out, _tone(_midi_hz(note), n, timbre, rng, sr), 0, 1.0)
    return Example(_normalise(_with_background(out, rng, sr), rng), str(note), {"timbre": timbre, "midi": str(note)})


def timbre_example(index: int, rng: np.random.Generator, sr: int = SAMPLE_RATE) -> Example:
    timbre = list(TIMBRES)[index % len(TIMBRES)]
    note = int(rng.integers(45, 81))
    n = sr
    out = np.zeros(n, dtype=np.float32)
    _add(out, _tone(_midi_hz(note), n, timbre, rng, sr), 0, 1.0)
    return Example(_normalise(out, rng), timbre, {"timbre": timbre, "midi": str(note)})


def key_example(index: int, rng: np.random.Generator, sr: int = SAMPLE_RATE) -> Example:
    key = KEYS[index % len(KEYS)]
    tonic_pc = index % 12
    scale = MAJOR if index % len(KEYS) < 12 else HARMONIC_MINOR
    root = 48 + tonic_pc if tonic_pc < 6 else 36 + tonic_pc  # tonic between F#2 and F3
    seconds = 3.0
    n = int(seconds * sr)
    bar = n // 4
    pad, lead = (str(t) for t in rng.choice(list(TIMBRES), size=2))
    progression = PROGRESSIONS[int(rng.integers(len(PROGRESSIONS)))]
    out = np.zeros(n, dtype=np.float32)
    for i, degree in enumerate(progression):  # triads of the scale, one per bar, plus the bass root
        chord = [root + 12 + scale[(degree + k) % 7] + 12 * ((degree + k) // 7) for k in (0, 2, 4)]
        for note in chord:
            _add(out, _tone(_midi_hz(note), bar + sr // 8, pad, rng, sr), i * bar, 0.15)
        _add(out, _tone(_midi_hz(root + scale[degree]), bar, "pluck", rng, sr), i * bar, 0.25)
    position, step = 0, bar // 4
    while position < n:  # melody on quarter notes, mostly chord tones of the scale
        if rng.random() < 0.8:
            note = root + 24 + scale[int(rng.integers(0, 7))]
            _add(out, _tone(_midi_hz(note), step + sr // 8, lead, rng, sr), position, 0.2)
        position += step
    return Example(
        _normalise(_with_background(out, rng, sr), rng),
        key,
        {"tonic": PITCH_CLASS_NAMES[tonic_pc], "mode": key.split()[1]},
    )


def tempo_example(index: int, rng: np.random.Generator, sr: int = SAMPLE_RATE) -> Example:
    bpm = float(rng.uniform(*TEMPO_RANGE))
    seconds = 3.0
    n = int(seconds * sr)
    beat = sr * 60.0 / bpm
    out = np.zeros(n, dtype=np.float32)
    root = int(rng.integers(36, 48))
    bass = str(rng.choice(["pluck", "saw", "square"]))
    b = 0
    while int(b * beat) < n:
        start = int(b * beat)
        _add(out, _drum("kick" if b % 2 == 0 else "snare", sr // 3, rng, sr), start, 0.6)
        _add(out, _drum("hat", sr // 10, rng, sr), start + int(beat / 2), 0.3)
        if b % 2 == 0:
            note = root + (0, 7, 5, 3)[(b // 2) % 4]
            _add(out, _tone(_midi_hz(note), int(beat), bass, rng, sr), start, 0.3)
        b += 1
    return Example(_normalise(out, rng), f"{bpm:.2f}", {"bpm": f"{bpm:.2f}"})


@dataclass(frozen=True)
class DemoTask:
    """How to generate one task: the example maker, the number of classes (0: regression)
    and examples per class."""

    name: str
    make: Callable[[int, np.random.Generator, int], Example]
    num_classes: int
    per_class: int

    @property
    def size(self) -> int:
        return max(self.num_classes, 1) * self.per_class


DEMO_TASKS: dict[str, DemoTask] = {
    "pitch": DemoTask("pitch", pitch_example, len(PITCH_NOTES), 18),
    "timbre": DemoTask("timbre", timbre_example, len(TIMBRES), 36),
    "key": DemoTask("key", key_example, len(KEYS), 12),
    "tempo": DemoTask("tempo", tempo_example, 0, 120),
}
#: Seed offset of the tasks: their clips never coincide with the pre-training clips (seed 0..).
TASK_SEED_OFFSET = 1_000


def _split(position: int, count: int) -> str:
    """2/3 train, 1/6 valid, 1/6 test of ``count`` examples of one class, by position."""
    valid = max(1, count // 6)
    if position < count - 2 * valid:
        return "train"
    return "valid" if position < count - valid else "test"


def write_demo_task(directory: str | Path, task: DemoTask, seed: int = 0, progress: bool = True) -> Path:
    """Write ``task``'s clips to ``directory/<name>/`` and its CSV to ``directory/<name>.csv``.

    Existing clips are kept (the set is deterministic), so re-running is cheap; the CSV is
    rewritten atomically last, so an interrupted run never leaves a CSV naming missing files.
    """
    directory = Path(directory)
    folder = directory / task.name
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in tqdm(range(task.size), desc=f"demo task {task.name}", disable=not progress, unit="clip"):
        rng = np.random.default_rng([TASK_SEED_OFFSET + seed, len(task.name), i])
        example = task.make(i, rng, SAMPLE_RATE)
        path = folder / f"{task.name}_{i:04d}.flac"
        if not path.exists():
            write_flac(path, example.audio, SAMPLE_RATE)
        # classification: the i-th example of its class is i // num_classes; regression: by index
        classes = max(task.num_classes, 1)
        split = _split(i // classes, task.per_class) if task.num_classes else _split(i, task.size)
        rows.append({"path": f"{task.name}/{path.name}", "label": example.label, "split": split, **example.info})
    return write_task_csv(directory / f"{task.name}.csv", rows)


def write_task_csv(csv_path: Path, rows: list[dict[str, str]]) -> Path:
    """A task CSV (the columns of the first row), written atomically: written last, it never
    names a clip that is not on disk yet."""
    tmp = csv_path.with_name(csv_path.name + ".part")
    with tmp.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(csv_path)
    return csv_path


def demo_tasks_dir(data_path: str | Path) -> Path:
    """Where the demo probe tasks of the demo set at ``data_path`` go: ``<data_path>-tasks``
    (``data/demo`` -> ``data/demo-tasks``)."""
    data_path = Path(data_path)
    return data_path.with_name(data_path.name + "-tasks")


def write_demo_tasks(
    directory: str | Path, names: list[str] | None = None, seed: int = 0, progress: bool = True
) -> dict[str, Path]:
    """Write the demo probe tasks (all of :data:`DEMO_TASKS` or ``names``); returns name -> CSV."""
    unknown = sorted(set(names or []) - set(DEMO_TASKS))
    if unknown:
        raise MertlabError(f"unknown demo task(s) {', '.join(unknown)}; choose from {', '.join(DEMO_TASKS)}")
    return {name: write_demo_task(directory, DEMO_TASKS[name], seed, progress) for name in (names or list(DEMO_TASKS))}
