"""The real-music dev set (`mertlab dev-data`): labels decided in the MIDI match what the notes
play, fixed splits, recordings cut from (fake and real) packages, rendering with FluidSynth, and
the whole build end to end.

The tests marked ``needs_packages`` use the Debian packages (`make test` installs them where it
has root or sudo, as in CI): skipped where they are missing, failed where
``MERTLAB_REQUIRE_SYSTEM_DEPS=1`` (which `make test` sets when it could install them), so a
missing install step cannot pass unseen.
"""

from __future__ import annotations

import io
import json
import os
import re
import time
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from hypothesis import given, settings
from hypothesis import strategies as st

from mertlab.cli import main
from mertlab.data.demo import MAJOR
from mertlab.data.demo_tasks import HARMONIC_MINOR, KEYS, PITCH_CLASS_NAMES
from mertlab.data.devset import build as build_module
from mertlab.data.devset.build import SIZES, DevSetSize, build_dev_set
from mertlab.data.devset.gm import FAMILIES, UNPITCHED, family_of, program_range
from mertlab.data.devset.midi import (
    PATTERNS,
    QUALITIES,
    TASKS,
    Clip,
    Note,
    Part,
    make_clip,
    split_of,
    voicing,
)
from mertlab.data.devset.recordings import RecordingPlan, piece_starts, write_recordings
from mertlab.data.devset.sources import APT_PACKAGES, RECORDINGS, SOUNDFONT, RecordingSource, missing_packages
from mertlab.data.devset.tasks import task_rows, task_size
from mertlab.errors import DataError
from mertlab.probe.task import load_task

pytestmark = pytest.mark.filterwarnings("ignore")
ROOT = Path(__file__).resolve().parents[1]


def _packages_or_skip() -> None:
    missing = missing_packages()
    if missing:
        message = f"Debian packages missing: {', '.join(missing)} (make dev-data-packages)"
        if os.environ.get("MERTLAB_REQUIRE_SYSTEM_DEPS") == "1":
            pytest.fail(message + "; `make system-deps` must install them")
        pytest.skip(message)


@pytest.fixture
def packages():
    _packages_or_skip()


# --------------------------------------------------------------------------- labels (no audio)
indices = st.integers(0, 5000)
seeds = st.integers(0, 3)


def assert_well_formed(clip: Clip) -> None:
    assert clip.parts and 0.5 <= clip.peak <= 0.9
    for part in clip.parts:
        assert 0 <= part.program < 128 and part.notes
        for note in part.notes:
            assert 0 <= note.pitch < 128 and 1 <= note.velocity <= 127
            assert 0.0 <= note.start < clip.seconds and note.duration > 0


@settings(max_examples=80, deadline=None)
@given(index=indices, seed=seeds)
def test_pitch_clip_plays_its_label_on_a_program_that_reaches_it(index, seed):
    clip = make_clip("pitch", index, seed)
    assert_well_formed(clip)
    (part,) = clip.parts
    (note,) = part.notes
    assert clip.label == str(note.pitch) == TASKS["pitch"].classes[index % 36]
    assert part.program not in UNPITCHED and not part.drums
    low, high = program_range(part.program)
    assert low <= note.pitch <= high


@settings(max_examples=80, deadline=None)
@given(index=indices, seed=seeds)
def test_instrument_clip_is_played_by_a_program_of_its_family(index, seed):
    clip = make_clip("instrument", index, seed)
    assert_well_formed(clip)
    (part,) = clip.parts
    assert clip.label == FAMILIES[index % 10] == family_of(part.program) and part.program not in UNPITCHED
    assert 3 <= len(part.notes) <= 6
    low, high = program_range(part.program)
    assert all(low <= n.pitch <= high for n in part.notes)


@settings(max_examples=80, deadline=None)
@given(index=indices, seed=seeds)
def test_chord_clip_sounds_exactly_its_quality_above_its_root(index, seed):
    clip = make_clip("chord", index, seed)
    assert_well_formed(clip)
    root = int(clip.info["root"])
    intervals = QUALITIES[clip.label]
    assert clip.label == list(QUALITIES)[index % 8]
    chord = clip.parts[0].notes
    assert sorted((n.pitch - root) % 12 for n in chord) == sorted(i % 12 for i in intervals)
    assert [n.pitch for n in chord] == voicing(root, intervals, int(clip.info["inversion"]))
    if clip.info["bass"] == "yes":
        assert clip.parts[1].notes[0].pitch % 12 == root % 12 and clip.parts[1].notes[0].pitch < root


def test_voicing_inversions_keep_the_pitch_classes_and_raise_the_bass():
    assert voicing(60, (0, 4, 7), 0) == [60, 64, 67]
    assert voicing(60, (0, 4, 7), 1) == [64, 67, 72]
    assert voicing(60, (0, 4, 7, 10), 3) == [70, 72, 76, 79]


@settings(max_examples=80, deadline=None)
@given(index=indices, seed=seeds)
def test_key_clip_stays_in_its_scale_and_its_bass_starts_on_the_tonic(index, seed):
    clip = make_clip("key", index, seed)
    assert_well_formed(clip)
    assert clip.label == KEYS[index % 24]
    tonic = PITCH_CLASS_NAMES.index(clip.info["tonic"])
    scale = {(tonic + s) % 12 for s in (MAJOR if clip.info["mode"] == "major" else HARMONIC_MINOR)}
    pitched = [p for p in clip.parts if not p.drums]
    assert all(n.pitch % 12 in scale for p in pitched for n in p.notes)
    chords, bass = pitched[0], pitched[1]
    third = 4 if clip.info["mode"] == "major" else 3
    assert bass.notes[0].pitch % 12 == tonic  # every progression starts on I
    assert {n.pitch % 12 for n in chords.notes[:3]} == {tonic, (tonic + third) % 12, (tonic + 7) % 12}
    assert (clip.info["drums"] == "yes") == any(p.drums for p in clip.parts)


@settings(max_examples=60, deadline=None)
@given(index=indices, seed=seeds)
def test_tempo_clip_beats_are_spaced_by_its_label(index, seed):
    clip = make_clip("tempo", index, seed)
    assert_well_formed(clip)
    bpm = float(clip.label)
    assert 70.0 <= bpm <= 170.0 and clip.info["pattern"] in PATTERNS
    drums = next(p for p in clip.parts if p.drums)
    beat = 60.0 / bpm
    onsets = np.array([n.start for n in drums.notes])
    # every pattern sits on a grid of 1/4 or 1/3 beats: all gaps are multiples of beat / 12
    steps = np.diff(onsets) / (beat / 12)
    assert np.allclose(steps, np.round(steps), atol=1e-6)
    kicks = [n.start for n in drums.notes if n.pitch == 36]
    half_beats = np.diff(kicks) / (beat / 2)  # kicks fall on half beats in every pattern
    assert len(kicks) >= 2 and np.allclose(half_beats, np.round(half_beats), atol=1e-6)


def test_clips_are_seeded_per_task_index_and_seed():
    assert make_clip("key", 5) == make_clip("key", 5)
    assert make_clip("key", 5) != make_clip("key", 5, seed=1)
    assert make_clip("tempo", 3).label != make_clip("tempo", 4).label


@settings(max_examples=100, deadline=None)
@given(count=st.integers(3, 500))
def test_fixed_splits_are_60_20_20_in_order(count):
    splits = [split_of(position, count) for position in range(count)]
    held_out = max(1, round(0.2 * count))
    assert Counter(splits) == {"train": count - 2 * held_out, "valid": held_out, "test": held_out}
    assert splits == sorted(splits, key=["train", "valid", "test"].index)


def test_task_rows_are_balanced_per_class_and_split_and_grow_by_appending():
    for name, task in TASKS.items():
        per_class = SIZES["ci"].clips[name]
        rows = task_rows(task, per_class)
        test = [r for r in rows if r["split"] == "test"]
        if task.classes:
            assert Counter(r["label"] for r in rows) == dict.fromkeys(task.classes, per_class)
            assert Counter(r["label"] for r in test) == dict.fromkeys(task.classes, max(1, round(0.2 * per_class)))
        assert len({r["path"] for r in rows}) == len(rows)
        # a bigger size adds clips after these: the ci slice's clips are the first of the full set's
        bigger = task_rows(task, per_class + 2)
        strip = lambda r: {k: v for k, v in r.items() if k != "split"}  # noqa: E731
        assert [strip(r) for r in rows] == [strip(r) for r in bigger[: len(rows)]]
    assert sum(task_size(t, SIZES["full"].clips[n]) for n, t in TASKS.items()) == 6240


# --------------------------------------------------------------------------- recordings
@settings(max_examples=100, deadline=None)
@given(duration=st.floats(0.0, 4000.0), piece=st.floats(1.0, 30.0), cap=st.floats(1.0, 600.0))
def test_pieces_are_inside_the_track_apart_and_spread_over_it(duration, piece, cap):
    starts = piece_starts(duration, piece, cap)
    assert len(starts) == int(min(duration, cap) // piece)
    assert all(s >= 0 and s + piece <= duration + 1e-6 for s in starts)
    assert all(b - a >= piece - 1e-6 for a, b in zip(starts, starts[1:], strict=False))
    if len(starts) > 1:  # evenly spaced, from near the start to near the end
        assert np.allclose(np.diff(starts), starts[1] - starts[0])
        assert starts[0] <= (duration - len(starts) * piece) / len(starts) + 1e-6


def write_tone(path, seconds: float, sr: int, channels: int = 2, level: float = 0.3, fmt: str | None = None):
    t = np.arange(int(seconds * sr)) / sr
    wav = level * np.sin(2 * np.pi * 220 * t)
    sf.write(path, np.stack([wav] * channels, axis=1), sr, format=fmt)


@pytest.fixture
def fake_sources(tmp_path):
    """Two 'packages' laid out as Debian installs them: loose ogg/flac files, and a zip archive."""
    loose = tmp_path / "usr/share/game/music"
    loose.mkdir(parents=True)
    write_tone(loose / "a.ogg", 5.0, 44100)
    write_tone(loose / "b.flac", 1.5, 22050, channels=1)  # shorter than a piece
    write_tone(loose / "quiet.flac", 2.5, 24000, level=0.0)  # silence
    archive = tmp_path / "music.pk3"
    with zipfile.ZipFile(archive, "w") as z:
        for name, seconds in (("x.ogg", 2.5), ("noise.ogg", 3.0)):
            buffer = io.BytesIO()
            write_tone(buffer, seconds, 48000, fmt="OGG")
            z.writestr(f"sound/tracks/{name}", buffer.getvalue())
        z.writestr("readme.txt", "not audio")
    return (
        RecordingSource("game-music", "a game", "GPL-2+", "someone", "https://example.org", (str(loose / "*"),)),
        RecordingSource(
            "zip-music",
            "another",
            "GPL-3+",
            "someone else",
            "https://example.org",
            ("sound/tracks/*.ogg",),
            archive=str(archive),
            exclude={"noise.ogg": "an ambience"},
        ),
    )


PLAN = RecordingPlan(piece_seconds=2.0, track_seconds=4.0)


def test_recordings_are_cut_to_24k_mono_pieces_and_kept_on_rerun(fake_sources, tmp_path):
    out = tmp_path / "out"
    loose, archived = write_recordings(out, fake_sources, PLAN, False)
    assert (loose.tracks, loose.pieces, loose.silent, loose.short_tracks) == (3, 2, 1, ["b.flac"])
    assert (archived.tracks, archived.pieces) == (1, 1)  # noise.ogg excluded
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.flac"))
    assert files == ["game-music/a_00.flac", "game-music/a_01.flac", "zip-music/x_00.flac"]
    for path in out.rglob("*.flac"):
        info = sf.info(path)
        assert (info.samplerate, info.channels, info.frames) == (24000, 1, 48000)
    audio, _ = sf.read(out / "game-music/a_00.flac")
    spectrum = np.abs(np.fft.rfft(audio))
    assert abs(np.argmax(spectrum) / len(audio) * 24000 - 220) < 1  # resampled, not re-pitched
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*.flac")}
    write_recordings(out, fake_sources, PLAN, False)
    assert before == {p: p.stat().st_mtime_ns for p in out.rglob("*.flac")}
    capped = write_recordings(tmp_path / "capped", fake_sources, RecordingPlan(2.0, 4.0, max_tracks=1), False)
    assert [s.tracks for s in capped] == [1, 1]


@pytest.mark.integration
def test_a_missing_package_is_one_error_naming_how_to_install_it(tmp_path, fake_sources):
    gone = RecordingSource("gone-music", "-", "-", "-", "-", (str(tmp_path / "nothing/*.ogg"),))
    with pytest.raises(DataError, match=r"gone-music .*not installed; run `make dev-data-packages`"):
        write_recordings(tmp_path / "out", (gone,), RecordingPlan(), False)
    assert missing_packages((gone, *fake_sources), SOUNDFONT)[0] == "gone-music"
    with pytest.raises(DataError, match=r"the dev set's Debian packages are not installed: gone-music"):
        build_dev_set(tmp_path / "dev", "ci", sources=(gone,))
    assert not (tmp_path / "dev").exists()  # nothing written before the check


@pytest.mark.integration
def test_cli_reports_missing_packages_in_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(build_module, "missing_packages", lambda *a: ["nexuiz-music", "libfluidsynth3"])
    assert main(["dev-data", str(tmp_path / "dev"), "--size", "ci", "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not installed: nexuiz-music, libfluidsynth3" in err


def test_makefile_installs_exactly_the_dev_sets_packages():
    makefile = (ROOT / "Makefile").read_text()
    listed = re.search(r"^DEV_DATA_PACKAGES := (.*)$", makefile, re.M).group(1).split()
    assert sorted(listed) == sorted(APT_PACKAGES)
    system = re.search(r"^SYSTEM_PACKAGES := (.*)$", makefile, re.M).group(1).split()
    assert "$(DEV_DATA_PACKAGES)" in system  # `make test` (CI) installs them before the tests
    test_prerequisites = re.search(r"^test: (.*)$", makefile, re.M).group(1).split()
    assert "system-deps" in test_prerequisites, test_prerequisites
    reserved = {"hyperrogue-music", "singularity-music", "fluid-soundfont-gm", "musescore-general-soundfont"}
    assert not reserved & set(APT_PACKAGES) and "FluidR3" not in SOUNDFONT.path


# --------------------------------------------------------------------------- rendering (Debian packages)
def estimate_midi(audio: np.ndarray, candidates: range, sr: int = 24000) -> int:
    """The MIDI pitch whose harmonic comb (first 5 partials) collects the most spectral energy."""
    n = 1 << 17
    seconds = int(0.8 * sr)
    freqs = np.fft.rfftfreq(n, 1 / sr)
    mag = np.abs(np.fft.rfft(audio[:seconds] * np.hanning(seconds), n))

    def comb(midi: int) -> float:
        f0 = 440.0 * 2 ** ((midi - 69) / 12)
        return sum(mag[np.abs(freqs - k * f0) < f0 * 0.02].max(initial=0.0) for k in range(1, 6))

    return max(candidates, key=comb)


@pytest.fixture(scope="module")
def renderer():
    _packages_or_skip()
    from mertlab.data.devset.render import Renderer

    with Renderer() as r:
        yield r


@pytest.mark.parametrize(("program", "pitch"), [(40, 67), (73, 79), (71, 62), (0, 60)])
def test_a_rendered_note_sounds_at_its_pitch(renderer, program, pitch):
    """Violin G4, flute G5, clarinet D4 (odd harmonics: the fundamental is strongest), piano C4."""
    clip = Clip((Part(program, (Note(pitch, 0.0, 0.9, 100),)),), 1.0, str(pitch), peak=0.7)
    audio = renderer.render(clip)
    assert audio.dtype == np.float32 and len(audio) == 24000
    assert np.abs(audio).max() == pytest.approx(0.7, rel=1e-5)
    assert estimate_midi(audio, range(pitch - 13, pitch + 14)) == pitch


def test_rendering_is_exact_and_independent_of_what_came_before(renderer):
    first = [renderer.render(make_clip(task, 1)) for task in TASKS]
    again = [renderer.render(make_clip(task, 1)) for task in reversed(TASKS)][::-1]
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    tempo = renderer.render(make_clip("tempo", 0))
    assert len(tempo) == 5 * 24000 and np.sqrt(np.mean(tempo**2)) > 0.02  # a groove, not silence


def test_a_preset_the_soundfont_cannot_play_is_a_clear_error(renderer):
    with pytest.raises(DataError, match=r"rendered silence for program 78"):
        renderer.render(Clip((Part(78, (Note(95, 0.0, 0.5, 100),)),), 1.0, "x"))  # whistle has no high samples


def test_every_generated_clip_renders_audibly(renderer):
    """Two clips of every class of every task (pitch: each of its 36 notes), on the real soundfont."""
    for name, task in TASKS.items():
        for index in range(2 * max(len(task.classes), 4)):
            audio = renderer.render(make_clip(name, index))
            assert np.sqrt(np.mean(audio**2)) > 1e-3, (name, index)


TINY = DevSetSize(
    "tiny",
    RecordingPlan(piece_seconds=3.0, track_seconds=3.0, max_tracks=1),
    {"instrument": 3, "tempo": 5},  # a classification and a regression task; every task renders above
)


@pytest.mark.integration
def test_build_end_to_end_from_the_debian_packages(packages, tmp_path, monkeypatch):
    monkeypatch.setitem(SIZES, "tiny", TINY)
    started = time.monotonic()
    summary = build_dev_set(tmp_path / "dev", "tiny", progress=False)
    first = time.monotonic() - started
    root = tmp_path / "dev"
    assert [s.pieces for s in summary.recordings] == [1] * len(RECORDINGS)
    assert [t.name for t in summary.tasks] == ["instrument", "tempo"]
    for name, task in ((n, TASKS[n]) for n in TINY.clips):
        loaded = load_task(root / "tasks" / f"{name}.csv")
        assert loaded.type == ("regression" if task.is_regression else "classification")
        assert len(loaded.indices("test")) == max(len(task.classes), 1)  # one test clip per class
    readme = (root / "README.md").read_text()
    for source in (*RECORDINGS, SOUNDFONT):
        assert f"`{source.package}`" in readme and source.licence in readme
        assert (root / "licenses" / f"{source.package}.copyright").is_file()
    assert "| instrument | `tasks/instrument.csv` |" in readme and "each class 1 / 1 / 1" in readme
    stamp = json.loads((root / "dev-set.json").read_text())
    assert stamp["complete"] and stamp["identity"]["size"] == "tiny"
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*.flac")}
    started = time.monotonic()
    build_dev_set(root, "tiny", progress=False)  # resumes: every clip is there already
    assert before == {p: p.stat().st_mtime_ns for p in root.rglob("*.flac")}
    assert time.monotonic() - started < first
    with pytest.raises(DataError, match=r"holds a dev set built with other settings: seed 0 \(asked: 1\)"):
        build_dev_set(root, "tiny", seed=1, progress=False)
