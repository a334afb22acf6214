"""Audio discovery, decoding, crops, splits and the clear errors of bad data."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

from mertlab.data.audio import list_audio_paths, load_audio, probe, read_segment
from mertlab.data.datamodule import AudioDataModule
from mertlab.data.dataset import CropDataset, collate_crops
from mertlab.data.demo import render_piece, write_demo_dataset
from mertlab.data.files import split_files
from mertlab.data.source import scan_dataset
from mertlab.errors import DataError
from mertlab.experiment.spec import DataSpec


def write_tone(path, seconds, sr=16000, channels=1, freq=440.0):
    t = np.arange(int(seconds * sr)) / sr
    tone = 0.5 * np.sin(2 * np.pi * freq * t)
    sf.write(str(path), np.stack([tone] * channels, axis=1), sr)
    return path


def test_scan_folder_recursive_and_manifest(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    write_tone(tmp_path / "a" / "x.wav", 0.5)
    write_tone(tmp_path / "a" / "b" / "y.flac", 0.5)
    (tmp_path / "notes.txt").write_text("ignore me")
    assert [p.name for p in list_audio_paths(tmp_path, [".wav", ".flac"])] == ["y.flac", "x.wav"]
    manifest = tmp_path / "list.txt"
    manifest.write_text("# clips\na/x.wav\n\na/b/y.flac\n")
    assert [p.name for p in list_audio_paths(manifest, [".wav"])] == ["x.wav", "y.flac"]
    manifest.write_text("a/missing.wav\n")
    with pytest.raises(DataError, match=r"list.txt:1: listed audio file 'a/missing.wav' does not exist"):
        list_audio_paths(manifest, [".wav"])


def test_decode_mono_and_resample(tmp_path):
    path = write_tone(tmp_path / "s.wav", 1.0, sr=16000, channels=2)
    wav = load_audio(path, 24000)
    assert wav.dtype == torch.float32 and wav.ndim == 1 and abs(wav.shape[0] - 24000) <= 1
    spectrum = torch.fft.rfft(wav).abs()
    assert abs(int(spectrum.argmax()) - 440) <= 1  # still a 440 Hz tone after resampling


def test_crops_train_random_val_deterministic_short_files_padded(tmp_path):
    files = [probe(write_tone(tmp_path / f"{i}.wav", s, sr=24000)) for i, s in enumerate([3.0, 0.5])]
    train = CropDataset(files, 24000, 1.0, random_crops=True, seed=1)
    starts = {tuple(train[0].wav[:50].tolist()) for _ in range(5)}
    assert len(starts) > 1
    val = CropDataset(files, 24000, 1.0, random_crops=False)
    assert torch.equal(val[0].wav, val[0].wav)
    crop = val[1]
    assert crop.wav.shape == (24000,) and crop.length == 12000 and crop.wav[crop.length :].abs().max() == 0
    assert crop.file == files[1] and crop.start_seconds == 0.0
    middle = val[0]  # (3 s - (1 s + 16 spare frames)) / 2 into the file, and the audio from there
    assert middle.start_seconds == (72000 - 24016) // 2 / 24000
    assert torch.equal(middle.wav, read_segment(files[0], (72000 - 24016) // 2, 24000))
    batch = collate_crops([train[0], val[1]])
    assert batch.wav.shape == (2, 24000) and batch.lengths.tolist() == [24000, 12000]
    assert batch.files == (files[0], files[1]) and batch.start_seconds.dtype == torch.float64
    assert batch.start_seconds[1] == 0.0 and 0.0 <= batch.start_seconds[0] <= 2.0


def test_clear_errors_for_bad_data(tmp_path):
    with pytest.raises(DataError, match="data.path: .* does not exist"):
        scan_dataset(DataSpec(path=str(tmp_path / "nope")), 24000)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"data.path: no audio files \(.wav, .flac, .ogg, .mp3\) found"):
        scan_dataset(DataSpec(path=str(tmp_path / "empty")), 24000)
    write_tone(tmp_path / "empty" / "short.wav", 1.5)
    with pytest.raises(DataError, match=r"data.crop_seconds: 5 s is longer than every file .*longest: 1.50 s"):
        scan_dataset(DataSpec(path=str(tmp_path / "empty"), crop_seconds=5), 24000)
    (tmp_path / "only_bad").mkdir()
    (tmp_path / "only_bad" / "bad.wav").write_bytes(b"not audio at all")
    with pytest.raises(DataError, match="no audio files .* 1 skipped as unusable, e.g. .*bad.wav: cannot read audio"):
        scan_dataset(DataSpec(path=str(tmp_path / "only_bad"), crop_seconds=1), 24000)


def test_split_is_deterministic_and_disjoint(tmp_path):
    files = [probe(write_tone(tmp_path / f"{i:02d}.wav", 0.2)) for i in range(20)]
    train, val = split_files(files, 0.2)
    assert set(train).isdisjoint(val) and len(train) + len(val) == 20 and val
    assert split_files(list(reversed(files)), 0.2)[1] == list(reversed(val))  # by name, not order


def test_datamodule_batches(tmp_path):
    write_demo_dataset(tmp_path, num_clips=6, seconds=2.0, progress=False)
    dm = AudioDataModule(DataSpec(path=str(tmp_path), crop_seconds=1.0, batch_size=2, val_fraction=0.2), 24000)
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    assert batch.wav.shape == (2, 24000) and batch.lengths.tolist() == [24000, 24000]
    assert len(dm.val_files) >= 1


def test_demo_pieces_are_musical_and_deterministic():
    a = render_piece(2.0, np.random.default_rng(3))
    b = render_piece(2.0, np.random.default_rng(3))
    c = render_piece(2.0, np.random.default_rng(4))
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert a.dtype == np.float32 and 0.85 < np.abs(a).max() <= 0.9 + 1e-6
    spectrum = np.abs(np.fft.rfft(a))
    freqs = np.fft.rfftfreq(len(a), 1 / 24000)
    assert freqs[spectrum.argmax()] < 2000  # tonal energy in the musical range, not white noise
