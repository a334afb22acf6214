"""The generated demo probe tasks: loadable by `mertlab probe`, labels that match the audio."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from mertlab.data.demo import MAJOR, TIMBRES
from mertlab.data.demo_tasks import (
    DEMO_TASKS,
    HARMONIC_MINOR,
    KEYS,
    PITCH_CLASS_NAMES,
    SAMPLE_RATE,
    write_demo_task,
    write_demo_tasks,
)
from mertlab.errors import MertlabError
from mertlab.probe.task import load_task

pytestmark = pytest.mark.integration  # slow: generates every demo task, about 20 s of CPU

HARMONIC = {"organ", "pluck", "saw", "square", "flute", "strings"}  # timbres whose lowest partial is f0


@pytest.fixture(scope="module")
def tasks(tmp_path_factory) -> dict[str, Path]:
    return write_demo_tasks(tmp_path_factory.mktemp("demo-tasks"), progress=False)


def rows(csv_path: Path) -> list[dict[str, str]]:
    with csv_path.open() as handle:
        return list(csv.DictReader(handle))


def spectrum(path: Path, seconds: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Frequencies and magnitudes of a clip (or of its first ``seconds``)."""
    audio, sr = sf.read(str(path), dtype="float32")
    assert sr == SAMPLE_RATE
    if seconds is not None:
        audio = audio[: int(seconds * sr)]
    n = 1 << 17
    mag = np.abs(np.fft.rfft(audio * np.hanning(len(audio)), n))
    return np.fft.rfftfreq(n, 1 / sr), mag


def midi_of(hz):
    return np.round(12 * np.log2(np.asarray(hz) / 440.0) + 69).astype(int)


def estimate_f0(path: Path, candidates_midi: np.ndarray) -> float:
    """MIDI pitch whose harmonic comb (first 5 partials) collects the most spectral energy, and
    whose fundamental itself is present (rules out sub-octaves)."""
    freqs, mag = spectrum(path)

    def energy(hz: float) -> float:
        return float(mag[np.argmin(np.abs(freqs - hz))])

    scores = []
    for midi in candidates_midi:
        f0 = 440 * 2 ** ((midi - 69) / 12)
        scores.append(sum(energy(k * f0) / k for k in range(1, 6) if k * f0 < SAMPLE_RATE / 2))
    return float(candidates_midi[int(np.argmax(scores))])


def test_every_task_loads_with_fixed_splits(tasks):
    for name, csv_path in tasks.items():
        task = load_task(csv_path)
        spec = DEMO_TASKS[name]
        assert len(task.paths) == spec.size
        assert all(p.is_file() for p in task.paths)
        assert not task.auto_split
        expected = "regression" if spec.num_classes == 0 else "classification"
        assert task.type == expected, name
        if spec.num_classes:
            assert len(task.classes) == spec.num_classes
            for split in ("train", "valid", "test"):  # every class in every split
                assert len(set(task.targets[task.indices(split)].tolist())) == spec.num_classes, (name, split)


def test_pitch_labels_match_the_audio(tasks):
    candidates = np.arange(36, 84)
    checked = [r for r in rows(tasks["pitch"]) if r["timbre"] in HARMONIC]
    assert len(checked) > 100
    base = tasks["pitch"].parent
    wrong = [r["path"] for r in checked if estimate_f0(base / r["path"], candidates) != int(r["label"])]
    assert len(wrong) <= len(checked) // 50, wrong[:10]


def test_timbre_classes_cover_every_timbre_and_pitch_varies(tasks):
    table = rows(tasks["timbre"])
    assert {r["label"] for r in table} == set(TIMBRES)
    assert len({r["midi"] for r in table}) > 20  # pitch is no shortcut to the timbre label


def test_key_labels_match_the_chroma_and_the_bass(tasks):
    """The 7 strongest chroma bins of a clip are (at least 6 of) its key's scale, and the bass
    note of its first bar is the key's tonic."""
    base = tasks["key"].parent
    table = rows(tasks["key"])
    in_scale = on_tonic = 0
    for r in table:
        assert r["label"] == f"{r['tonic']} {r['mode']}" and r["label"] in KEYS
        tonic = PITCH_CLASS_NAMES.index(r["tonic"])
        scale = {(tonic + d) % 12 for d in (MAJOR if r["mode"] == "major" else HARMONIC_MINOR)}
        freqs, mag = spectrum(base / r["path"])
        keep = (freqs > 60) & (freqs < 1000)
        chroma = np.bincount(midi_of(freqs[keep]) % 12, weights=mag[keep], minlength=12)
        in_scale += len(set(np.argsort(chroma)[-7:].tolist()) & scale) >= 6
        freqs, mag = spectrum(base / r["path"], seconds=0.5)
        bass = (freqs > 80) & (freqs < 190)
        on_tonic += midi_of(freqs[bass][np.argmax(mag[bass])]) % 12 == tonic
    assert in_scale >= 0.9 * len(table), f"{in_scale}/{len(table)} clips' chroma is their key's scale"
    # the mix's kick drum sweeps through the bass band, so this simple peak picker misses a few
    assert on_tonic >= 0.8 * len(table), f"{on_tonic}/{len(table)} clips start on their tonic"


def test_tempo_labels_match_the_onsets(tasks):
    """The labelled beat period is a peak of the onset autocorrelation: stronger than every
    period 12-30% away (which holds for no metrical multiple of a half beat, so octave-style
    ambiguity of a peak picker cannot fail it, while a wrong label does)."""
    base = tasks["tempo"].parent
    table = rows(tasks["tempo"])
    periodic = 0
    for r in table:
        audio, sr = sf.read(str(base / r["path"]), dtype="float32")
        hop = 160
        energy = np.array([np.sum(audio[i : i + hop] ** 2) for i in range(0, len(audio) - hop, hop)])
        onset = np.maximum(np.diff(np.log(energy + 1e-6)), 0)
        onset -= onset.mean()
        ac = np.correlate(onset, onset, "full")[len(onset) - 1 :]
        lag = 60 / float(r["label"]) * sr / hop  # the labelled beat period, in hops
        index = np.arange(len(ac))
        at_label = ac[np.abs(index - lag) <= 0.03 * lag + 1].max()
        off_tempo = ((index >= 0.75 * lag) & (index <= 0.88 * lag)) | ((index >= 1.12 * lag) & (index <= 1.3 * lag))
        periodic += at_label > ac[off_tempo].max()
    assert periodic >= 0.9 * len(table), f"{periodic}/{len(table)} clips peak at their labelled beat period"


def test_tasks_are_deterministic_and_disjoint_from_pretraining(tmp_path):
    a = write_demo_task(tmp_path / "a", DEMO_TASKS["timbre"], progress=False)
    b = write_demo_task(tmp_path / "b", DEMO_TASKS["timbre"], progress=False)
    first_a, first_b = (sf.read(str(p.parent / rows(p)[0]["path"]))[0] for p in (a, b))
    np.testing.assert_array_equal(first_a, first_b)
    assert a.read_text() == b.read_text()


def test_unknown_task_name_is_one_clear_error(tmp_path):
    with pytest.raises(MertlabError, match="unknown demo task.*pitch"):
        write_demo_tasks(tmp_path, names=["pich"])
