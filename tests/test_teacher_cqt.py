"""The `cqt` teacher: nnAudio CQT magnitudes as continuous targets."""

from __future__ import annotations

import math

import pytest
import torch

from mertlab.errors import DataError, MertlabError
from mertlab.plugin_system.registry import get_registry
from synth_audio import SR, chord, melody, padded_batch


def build(**params):
    return get_registry().build("teacher", "cqt", params)


@pytest.fixture(scope="module")
def mert_cqt():
    """MERT's defaults: 24 kHz, hop 320, 336 bins, 48 bins/octave from 32.7 Hz."""
    from mertlab.plugins.teachers.cqt import CQTParams, CQTTeacher

    return CQTTeacher(CQTParams())


def test_registered_with_mert_defaults(mert_cqt):
    assert "cqt" in get_registry().names("teacher")
    info = mert_cqt.info
    assert (info.kind, info.dim, info.frame_rate, info.vocab_sizes) == ("continuous", 336, 75.0, ())
    assert mert_cqt.sample_rate == SR and mert_cqt.target_kind == "continuous"


def test_kind_shape_dtype_and_pitch(mert_cqt):
    wav = chord(1.0, (69,))[None]  # A4 = 440 Hz
    out = mert_cqt.targets(wav, torch.tensor([SR]))
    assert out.values.shape == (1, 1 + SR // 320, 336) and out.values.dtype == torch.float32
    assert out.lengths.tolist() == [76]
    assert out.info == mert_cqt.info
    # the strongest bin is 440 Hz: 48 * log2(440 / 32.7) ~ 180
    peak = out.values[0, 10:-10].mean(0).argmax().item()
    assert abs(peak - 48 * math.log2(440 / 32.7)) <= 1


def test_deterministic_across_calls_and_instances(mert_cqt):
    wav = melody(0.5, seed=1)[None]
    lengths = torch.tensor([wav.shape[1]])
    a = mert_cqt.targets(wav, lengths).values
    b = mert_cqt.targets(wav, lengths).values
    assert torch.equal(a, b)
    assert torch.equal(a, build().targets(wav, lengths).values)


def test_batch_equals_one_by_one_with_junk_padding(mert_cqt):
    clips = [melody(0.6, seed=2), chord(0.3, (48, 52, 55), seed=3), melody(0.45, seed=4)]
    wav, lengths = padded_batch(clips, pad_value=0.7)  # junk after each clip must not leak in
    batch = mert_cqt.targets(wav, lengths)
    assert batch.lengths.tolist() == [1 + c.numel() // 320 for c in clips]
    for b, clip in enumerate(clips):
        alone = mert_cqt.targets(clip[None], torch.tensor([clip.numel()]))
        n = int(alone.lengths[0])
        assert torch.allclose(batch.values[b, :n], alone.values[0], rtol=1e-4, atol=1e-6)
        assert bool((batch.values[b, n:] == 0).all())


def test_short_clip_4000_samples_and_shorter_than_a_hop(mert_cqt):
    # nnAudio's default reflect padding raises for any clip shorter than half its 65536-sample kernel
    out = mert_cqt.targets(melody(4000 / SR, seed=5)[None], torch.tensor([4000]))
    assert out.values.shape == (1, 13, 336) and bool(torch.isfinite(out.values).all())
    assert out.values.abs().sum() > 0
    tiny = mert_cqt.targets(torch.randn(1, 100), torch.tensor([100]))  # under one hop: one centred frame
    assert tiny.values.shape == (1, 1, 336) and tiny.lengths.tolist() == [1]


def test_silent_audio_is_finite_in_every_mode():
    silence = torch.zeros(2, 6000)
    lengths = torch.tensor([6000, 3000])
    for magnitude in ("linear", "log", "log1p"):
        for normalize in ("none", "per_bin", "global"):
            out = build(magnitude=magnitude, normalize=normalize, n_bins=48, fmin=65.4).targets(silence, lengths)
            assert bool(torch.isfinite(out.values).all()), (magnitude, normalize)
    assert torch.equal(build(n_bins=48, fmin=65.4).targets(silence, lengths).values, torch.zeros(2, 19, 48))


def test_log_and_per_bin_normalisation():
    teacher = build(magnitude="log", normalize="per_bin", n_bins=96, fmin=65.4, log_eps=1e-4)
    wav, lengths = padded_batch([melody(0.5, seed=6), melody(0.3, seed=7)], pad_value=-0.3)
    out = teacher.targets(wav, lengths)
    for b, n in enumerate(out.lengths.tolist()):
        valid = out.values[b, :n]
        assert torch.allclose(valid.mean(0), torch.zeros(96), atol=1e-4)
        assert torch.allclose(valid.std(0, unbiased=False), torch.ones(96), atol=1e-3)
    linear = build(n_bins=96, fmin=65.4).targets(wav, lengths)
    raw_log = torch.log(linear.values[0, :5] + 1e-4)
    assert torch.allclose(
        build(magnitude="log", n_bins=96, fmin=65.4, log_eps=1e-4).targets(wav, lengths).values[0, :5],
        raw_log,
        atol=1e-5,
    )


def test_global_normalisation_uses_one_mean_and_std_per_clip():
    out = build(normalize="global", n_bins=48, fmin=65.4).targets(melody(0.4, seed=8)[None], torch.tensor([9600]))
    valid = out.values[0, : int(out.lengths[0])]
    assert abs(valid.mean().item()) < 1e-4 and abs(valid.std(unbiased=False).item() - 1) < 1e-3
    assert valid.std(0).std() > 0.01  # bins keep their relative scale


def test_kernels_are_not_in_the_state_dict(mert_cqt):
    assert mert_cqt.state_dict() == {}


def test_bad_input_and_params_are_clear_errors(mert_cqt):
    with pytest.raises(MertlabError, match="between 1 and"):
        mert_cqt.targets(torch.zeros(1, 100), torch.tensor([0]))
    with pytest.raises(MertlabError, match=r"\[batch, samples\]"):
        mert_cqt.targets(torch.zeros(100), torch.tensor([100]))
    # the check every built-in teacher runs first (mertlab.toolkit.frame_features.check_audio_batch)
    nan = torch.zeros(2, 1000)
    nan[1, 10] = float("nan")
    with pytest.raises(DataError, match="teacher 'cqt': audio contains NaN or infinite samples"):
        mert_cqt.targets(nan, torch.tensor([1000, 500]))
    nan[1, 600:] = float("nan")  # in the padding only: ignored
    nan[1, 10] = 0.0
    assert mert_cqt.targets(nan, torch.tensor([1000, 500])).lengths.tolist() == [4, 2]
    with pytest.raises(MertlabError, match="Nyquist"):
        build(n_bins=500)
    with pytest.raises(MertlabError, match="hop_length"):
        build(hop_length=0)


def _close_to_exact(fast: torch.Tensor, exact: torch.Tensor) -> None:
    """The tolerance the `implementation` param states: relative L2 error and largest error
    (relative to the largest magnitude) both under 1e-3."""
    err = (fast - exact).abs()
    assert float(err.norm() / exact.norm()) < 1e-3
    assert float(err.max() / exact.abs().max()) < 1e-3


@pytest.fixture(scope="module")
def mert_cqt_exact():
    from mertlab.plugins.teachers.cqt import CQTParams, CQTTeacher

    return CQTTeacher(CQTParams(implementation="exact"))


def test_fast_equals_exact_within_tolerance_at_mert_settings(mert_cqt, mert_cqt_exact):
    assert mert_cqt.params.implementation == "fast"  # the default
    clips = [melody(2.0, seed=11), chord(0.7, (40, 64, 79), seed=12), melody(0.2, seed=13)]
    wav, lengths = padded_batch(clips, pad_value=0.5)
    fast, exact = mert_cqt.targets(wav, lengths), mert_cqt_exact.targets(wav, lengths)
    assert torch.equal(fast.lengths, exact.lengths) and fast.values.shape == exact.values.shape
    for b, n in enumerate(fast.lengths.tolist()):
        _close_to_exact(fast.values[b, :n], exact.values[b, :n])
    assert bool((fast.values[0, :, :] >= 0).all())


def test_fast_equals_exact_across_blocks_and_other_settings():
    # 12 s spans many FFT blocks (103 and 193 frames each here); small kernels, other hops and bins
    for params in (
        {"n_bins": 24, "bins_per_octave": 12, "fmin": 65.4},
        {"n_bins": 84, "bins_per_octave": 12, "hop_length": 256, "fmin": 32.7},
    ):
        fast, exact = build(**params), build(implementation="exact", **params)
        wav = melody(12.0, seed=14)[None]
        lengths = torch.tensor([wav.shape[1]])
        a, b = fast.targets(wav, lengths), exact.targets(wav, lengths)
        assert torch.equal(a.lengths, b.lengths)
        _close_to_exact(a.values, b.values)


def test_implementation_changes_the_fingerprint():
    assert build().fingerprint() != build(implementation="exact").fingerprint()
    assert build().fingerprint() == build(implementation="fast").fingerprint()
