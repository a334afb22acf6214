"""The probe tasks' music as MIDI notes: what each clip plays and its label, before any sound.

A :class:`Clip` is a few :class:`Part` s (a General MIDI program, or a drum kit, and its notes)
plus its label; :mod:`.render` turns it into audio with a soundfont. Every clip is drawn from
its own seeded generator, so a task is the same on every machine, and labels are decided here,
where they can be checked without rendering:

=========== ====================================================================== ==========================
task        content                                                                label
=========== ====================================================================== ==========================
pitch       one note, 2 s clip, any of the 102 pitched GM programs that reach it  MIDI 48-83 (36 classes)
instrument  a phrase of 3-6 notes, 3 s, a program of one GM family                 family (10 classes)
chord       a chord in any inversion, block or arpeggiated, 2 s                    quality (8 classes)
key         4 chords (I-IV-V-I ...) with bass and melody, sometimes drums, 4 s     e.g. ``D minor`` (24)
tempo       a drum groove (one of 5 patterns, 7 kits) with bass, 5 s, 70-170 BPM   BPM (regression)
=========== ====================================================================== ==========================
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mertlab.data.demo import MAJOR
from mertlab.data.demo_tasks import HARMONIC_MINOR, KEYS, PROGRESSIONS
from mertlab.data.devset.gm import (
    BASS_PROGRAMS,
    CHORD_PROGRAMS,
    CLAP,
    CLOSED_HAT,
    DRUM_KITS,
    FAMILIES,
    KICK,
    LEAD_PROGRAMS,
    OPEN_HAT,
    PITCHED_PROGRAMS,
    PROGRAM_NAMES,
    RIDE,
    SNARE,
    family_programs,
    program_range,
)


@dataclass(frozen=True)
class Note:
    """One note: MIDI pitch (a drum key in a drum part), onset and length in seconds, velocity 1-127."""

    pitch: int
    start: float
    duration: float
    velocity: int


@dataclass(frozen=True)
class Part:
    """The notes one instrument plays: a GM program 0-127, or a drum kit (``drums``: bank 128)."""

    program: int
    notes: tuple[Note, ...]
    drums: bool = False


@dataclass(frozen=True)
class Clip:
    """A task example before rendering: its parts, length, label, descriptive CSV columns
    (``info``, the same keys for every clip of a task) and the peak level of its audio."""

    parts: tuple[Part, ...]
    seconds: float
    label: str
    info: dict[str, str] = field(default_factory=dict)
    peak: float = 0.8

    def notes(self) -> list[Note]:
        return [note for part in self.parts for note in part.notes]


def _velocity(rng: np.random.Generator, low: int = 50, high: int = 120) -> int:
    return int(rng.integers(low, high + 1))


def _peak(rng: np.random.Generator) -> float:
    """Loudness varies between clips, so it is no shortcut to any label."""
    return float(rng.uniform(0.5, 0.9))


def _pick(rng: np.random.Generator, options: tuple[int, ...] | list[int]) -> int:
    return int(options[int(rng.integers(len(options)))])


# --------------------------------------------------------------------------- pitch
PITCHES: tuple[int, ...] = tuple(range(48, 84))  # C3..B5


def pitch_programs(pitch: int) -> list[int]:
    """The pitched programs whose range holds ``pitch``."""
    return [p for p in PITCHED_PROGRAMS if program_range(p)[0] <= pitch <= program_range(p)[1]]


def pitch_clip(index: int, rng: np.random.Generator) -> Clip:
    pitch = PITCHES[index % len(PITCHES)]
    program = _pick(rng, pitch_programs(pitch))
    note = Note(pitch, float(rng.uniform(0.0, 0.2)), float(rng.uniform(0.4, 1.2)), _velocity(rng))
    info = {"program": str(program), "instrument": PROGRAM_NAMES[program]}
    return Clip((Part(program, (note,)),), 2.0, str(pitch), info, _peak(rng))


# --------------------------------------------------------------------------- instrument family
def instrument_clip(index: int, rng: np.random.Generator) -> Clip:
    family = FAMILIES[index % len(FAMILIES)]
    program = _pick(rng, family_programs(family))
    low, high = program_range(program)
    low, high = max(low, 36), min(high, 96)
    bottom = int(rng.integers(low, max(low, high - 12) + 1))  # the phrase stays within an octave
    scale = [bottom + step for step in range(13) if bottom + step <= high and step % 12 in MAJOR]
    notes: list[Any] = []
    time = float(rng.uniform(0.0, 0.15))
    count = int(rng.integers(3, 7))
    while len(notes) < count and time < 2.5:
        length = float(rng.choice([0.25, 0.375, 0.5, 0.75]))
        notes.append(Note(_pick(rng, scale), time, 0.9 * length, _velocity(rng)))
        time += length
    info = {"program": str(program), "instrument": PROGRAM_NAMES[program]}
    return Clip((Part(program, tuple(notes)),), 3.0, family, info, _peak(rng))


# --------------------------------------------------------------------------- chord quality
QUALITIES: dict[str, tuple[int, ...]] = {
    "major": (0, 4, 7),
    "minor": (0, 3, 7),
    "diminished": (0, 3, 6),
    "augmented": (0, 4, 8),
    "sus4": (0, 5, 7),
    "major7": (0, 4, 7, 11),
    "minor7": (0, 3, 7, 10),
    "dominant7": (0, 4, 7, 10),
}
CHORD_NAMES: tuple[str, ...] = tuple(QUALITIES)


def voicing(root: int, intervals: tuple[int, ...], inversion: int) -> list[int]:
    """The chord's pitches from the bass up, its lowest ``inversion`` notes moved up an octave."""
    notes = [root + i for i in intervals]
    return sorted(notes[inversion:] + [n + 12 for n in notes[:inversion]])


def chord_clip(index: int, rng: np.random.Generator) -> Clip:
    quality = CHORD_NAMES[index % len(CHORD_NAMES)]
    intervals = QUALITIES[quality]
    root = int(rng.integers(48, 67))
    inversion = int(rng.integers(len(intervals)))
    program = _pick(rng, CHORD_PROGRAMS)
    spread = float(rng.choice([0.0, 0.0, 0.03, 0.12]))  # block, or strummed / arpeggiated
    velocity = _velocity(rng, 60, 110)
    pitches = voicing(root, intervals, inversion)
    notes = [Note(p, 0.05 + k * spread, 1.5 - k * spread, velocity) for k, p in enumerate(pitches)]
    parts = [Part(program, tuple(notes))]
    with_bass = bool(rng.random() < 0.5)
    if with_bass:  # the root below, so inversions do not hide the root
        parts.append(Part(_pick(rng, BASS_PROGRAMS), (Note(root - 12 - 12 * (root >= 60), 0.05, 1.5, velocity),)))
    info = {
        "root": str(root),
        "inversion": str(inversion),
        "program": str(program),
        "instrument": PROGRAM_NAMES[program],
        "bass": "yes" if with_bass else "no",
    }
    return Clip(tuple(parts), 2.0, quality, info, _peak(rng))


# --------------------------------------------------------------------------- key
def key_clip(index: int, rng: np.random.Generator) -> Clip:
    key = KEYS[index % len(KEYS)]
    tonic_pc = index % 12
    scale = MAJOR if index % len(KEYS) < 12 else HARMONIC_MINOR
    root = 48 + tonic_pc if tonic_pc < 6 else 36 + tonic_pc  # tonic between F#2 and F3
    progression = PROGRESSIONS[int(rng.integers(len(PROGRESSIONS)))]
    chord_program, lead_program, bass_program = (
        _pick(rng, CHORD_PROGRAMS),
        _pick(rng, LEAD_PROGRAMS),
        _pick(rng, BASS_PROGRAMS),
    )
    bar = float(rng.uniform(0.85, 0.95))
    chords, bass, melody = [], [], []
    for i, degree in enumerate(progression):
        start = 0.05 + i * bar
        chord = [root + 12 + scale[(degree + k) % 7] + 12 * ((degree + k) // 7) for k in (0, 2, 4)]
        chords += [Note(p, start, bar, _velocity(rng, 50, 80)) for p in chord]
        bass.append(Note(root - 12 + scale[degree], start, bar * 0.95, _velocity(rng, 70, 100)))
        step = bar / (2 if rng.random() < 0.5 else 4)
        for k in range(round(bar / step)):
            if rng.random() < 0.8:
                chord_tone = rng.random() < 0.6
                degree_up = (degree + 2 * int(rng.integers(3))) % 7 if chord_tone else int(rng.integers(7))
                melody.append(Note(root + 24 + scale[degree_up], start + k * step, step * 0.9, _velocity(rng, 70, 110)))
    parts = [Part(chord_program, tuple(chords)), Part(bass_program, tuple(bass)), Part(lead_program, tuple(melody))]
    with_drums = bool(rng.random() < 0.5)
    if with_drums:
        parts.append(_drum_part(_pick(rng, DRUM_KITS), ROCK, 60.0 / (bar / 4), 0.05, 4.0, rng))
    info = {
        "tonic": key.split()[0],
        "mode": key.split()[1],
        "progression": "-".join(str(d + 1) for d in progression),
        "chords": PROGRAM_NAMES[chord_program],
        "melody": PROGRAM_NAMES[lead_program],
        "drums": "yes" if with_drums else "no",
    }
    return Clip(tuple(parts), 4.0, key, info, _peak(rng))


# --------------------------------------------------------------------------- tempo
#: Drum patterns of one 4/4 bar: (beat position, drum key, velocity).
DrumPattern = tuple[tuple[float, int, int], ...]
ROCK: DrumPattern = (
    *((b / 2, CLOSED_HAT, 70) for b in range(8)),
    (0, KICK, 110),
    (2, KICK, 100),
    (2.5, KICK, 90),
    (1, SNARE, 105),
    (3, SNARE, 105),
)
PATTERNS: dict[str, DrumPattern] = {
    "rock": ROCK,
    "four_on_the_floor": (
        *((b, KICK, 110) for b in range(4)),
        *((b + 0.5, OPEN_HAT, 75) for b in range(4)),
        (1, CLAP, 100),
        (3, CLAP, 100),
    ),
    "half_time": (*((b / 2, CLOSED_HAT, 70) for b in range(8)), (0, KICK, 110), (2.5, KICK, 95), (2, SNARE, 110)),
    "funk": (
        *((b / 4, CLOSED_HAT, 80 if b % 2 == 0 else 55) for b in range(16)),
        (0, KICK, 110),
        (1.5, KICK, 95),
        (2.5, KICK, 100),
        (1, SNARE, 105),
        (3, SNARE, 105),
    ),
    "shuffle": (
        *((b + s, RIDE, 85 if s == 0 else 65) for b in range(4) for s in (0.0, 2 / 3)),
        (0, KICK, 105),
        (2, KICK, 100),
        (1, SNARE, 95),
        (3, SNARE, 95),
    ),
}
PATTERN_NAMES: tuple[str, ...] = tuple(PATTERNS)
TEMPO_RANGE = (70.0, 170.0)


def _drum_part(
    kit: int, pattern: DrumPattern, bpm: float, first_beat: float, seconds: float, rng: np.random.Generator
) -> Part:
    """``pattern`` repeated from ``first_beat`` (seconds; may be negative) to ``seconds``."""
    beat = 60.0 / bpm
    notes = []
    bar_start = first_beat
    while bar_start < seconds:
        for position, key, velocity in pattern:
            start = bar_start + position * beat
            if 0.0 <= start < seconds:
                humanised = int(np.clip(velocity + rng.integers(-8, 9), 1, 127))
                notes.append(Note(key, start, 0.1, humanised))
        bar_start += 4 * beat
    return Part(kit, tuple(sorted(notes, key=lambda n: n.start)), drums=True)


def tempo_clip(index: int, rng: np.random.Generator) -> Clip:
    bpm = round(float(rng.uniform(*TEMPO_RANGE)), 2)  # the label, exactly
    beat = 60.0 / bpm
    pattern = PATTERN_NAMES[int(rng.integers(len(PATTERNS)))]
    kit = _pick(rng, DRUM_KITS)
    seconds = 5.0
    first_beat = -float(rng.uniform(0, 4 * beat))  # the clip starts anywhere in a bar
    drums = _drum_part(kit, PATTERNS[pattern], bpm, first_beat, seconds, rng)
    bass_program = _pick(rng, BASS_PROGRAMS)
    root = int(rng.integers(36, 48))
    bass = []
    b = 0
    while first_beat + b * beat < seconds:  # the root and fifth on beats 1 and 3
        start = first_beat + b * beat
        if b % 2 == 0 and start >= 0:
            bass.append(Note(root + (0, 7)[(b // 2) % 2], start, beat * 0.9, _velocity(rng, 80, 110)))
        b += 1
    parts = [drums, Part(bass_program, tuple(bass))]
    info = {"bpm": f"{bpm:.2f}", "pattern": pattern, "kit": str(kit), "bass": PROGRAM_NAMES[bass_program]}
    return Clip(tuple(parts), seconds, f"{bpm:.2f}", info, _peak(rng))


# --------------------------------------------------------------------------- the tasks
@dataclass(frozen=True)
class MidiTask:
    """How to generate one task: the clip maker (``make(index, rng)``; classification clips
    cycle through ``classes`` by index) and ``classes`` (empty: a regression task)."""

    name: str
    make: Callable[[int, np.random.Generator], Clip]
    classes: tuple[str, ...]
    summary: str

    @property
    def is_regression(self) -> bool:
        return not self.classes


TASKS: dict[str, MidiTask] = {
    t.name: t
    for t in (
        MidiTask("pitch", pitch_clip, tuple(str(p) for p in PITCHES), "MIDI pitch of one note"),
        MidiTask("instrument", instrument_clip, FAMILIES, "GM family of the instrument playing a phrase"),
        MidiTask("chord", chord_clip, CHORD_NAMES, "quality of a chord in any inversion"),
        MidiTask("key", key_clip, KEYS, "key of a chord progression with bass and melody"),
        MidiTask("tempo", tempo_clip, (), "tempo of a drum groove with bass, in BPM"),
    )
}
#: Seed offset of the task clips (``default_rng([offset + seed, task number, index])``).
TASK_SEED_OFFSET = 2_000


def clip_rng(task: str, index: int, seed: int = 0) -> np.random.Generator:
    """The generator of clip ``index`` of ``task``: independent of every other clip."""
    return np.random.default_rng([TASK_SEED_OFFSET + seed, list(TASKS).index(task), index])


def make_clip(task: str, index: int, seed: int = 0) -> Clip:
    """Clip ``index`` of ``task`` for ``seed``."""
    return TASKS[task].make(index, clip_rng(task, index, seed))


#: Fractions of the fixed splits (train, valid, test), per class.
SPLIT_FRACTIONS = (0.6, 0.2, 0.2)


def split_of(position: int, count: int) -> str:
    """The split of the ``position``-th of ``count`` examples of one class (or of a regression
    task): the first 60% train, then 20% valid, the last 20% test (at least one each)."""
    held_out = max(1, round(SPLIT_FRACTIONS[2] * count))
    if position < count - 2 * held_out:
        return "train"
    return "valid" if position < count - held_out else "test"
