"""EnCodec teacher: real encodec package, random-init architecture with fitted codebooks, and
loading a checkpoint the test writes in the file name and format the package uses. What every
codec teacher guarantees (determinism, batching, input checks) is checked on EnCodec too, in
test_codec_teachers.py."""

import math

import pytest
import torch
import torchaudio

from mertlab.errors import MertlabError, WeightsError
from mertlab.plugin_system.registry import get_registry
from mertlab.plugins.teachers.encodec import CHECKPOINT_NAME, EncodecParams, EncodecTeacher
from synth_audio import SR
from synth_audio import gliding_tones as music


def teacher_of(**params) -> EncodecTeacher:
    return EncodecTeacher(EncodecParams(**{"pretrained": False, "init_seconds": 2.0, **params}))


@pytest.fixture(scope="module")
def teacher() -> EncodecTeacher:
    return teacher_of()


def test_kind_shape_frame_rate_dtype(teacher):
    wav = torch.stack([music(SR, 1), torch.nn.functional.pad(music(13_000, 2), (0, SR - 13_000))])
    out = teacher.targets(wav, torch.tensor([SR, 13_000]))
    assert teacher.target_kind == "discrete" and teacher.sample_rate == SR == teacher.model.sample_rate
    assert out.info == teacher.info
    assert (out.info.kind, out.info.dim, out.info.frame_rate, out.info.vocab_sizes) == (
        "discrete",
        8,
        75.0,
        (1024,) * 8,
    )
    assert out.values.dtype == torch.int64 and out.values.shape == (2, 75, 8)
    assert out.lengths.tolist() == [75, math.ceil(13_000 / 320)] == [teacher.num_frames(SR), teacher.num_frames(13_000)]
    assert out.values.min() >= 0 and out.values.max() < 1024
    assert out.padding_mask[1, 41:].all() and not out.padding_mask[1, :41].any()


@pytest.mark.integration  # slow: EnCodec models on CPU
def test_bandwidth_and_n_codebooks_select_codebooks():
    assert teacher_of(bandwidth=1.5, init_seconds=1.0).info.dim == 2
    wav, n = music(SR // 2, 5)[None], torch.tensor([SR // 2])
    full = teacher_of(bandwidth=3)
    first_three = teacher_of(bandwidth=3, n_codebooks=3)
    assert full.info.vocab_sizes == (1024,) * 4 and first_three.info.vocab_sizes == (1024,) * 3
    assert torch.equal(first_three.targets(wav, n).values, full.targets(wav, n).values[..., :3])


@pytest.mark.parametrize(
    "params, message",
    [
        ({"bandwidth": 5}, "supports bandwidths 1.5, 3, 6, 12, 24 kbps"),
        ({"bandwidth": 6, "n_codebooks": 9}, "exceeds the 8 codebooks of bandwidth 6 kbps"),
        ({"pretrained": False, "weights": "x.th"}, "weights is set but pretrained is false"),
        ({"init_seconds": 0}, "init_seconds"),
    ],
)
def test_bad_params_are_clear_errors(params, message):
    with pytest.raises(MertlabError, match=message):
        get_registry().build("teacher", "encodec", params)


@pytest.mark.integration  # slow: EnCodec models on CPU
def test_loads_checkpoint_from_torch_hub_cache_and_explicit_path(teacher, tmp_path, monkeypatch):
    # Same file name and format (a torch.save'd state_dict) the encodec package caches.
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    cached = tmp_path / "torch" / "hub" / "checkpoints" / CHECKPOINT_NAME
    cached.parent.mkdir(parents=True)
    torch.save(teacher.model.state_dict(), cached)
    wav, n = music(SR, 6)[None], torch.tensor([SR])

    loaded = EncodecTeacher(EncodecParams())  # pretrained: true, default location
    assert all(torch.equal(v, loaded.model.state_dict()[k]) for k, v in teacher.model.state_dict().items())
    assert torch.equal(loaded.targets(wav, n).values, teacher.targets(wav, n).values)
    assert loaded.fingerprint_payload() == teacher.fingerprint_payload()

    other = tmp_path / "elsewhere.th"
    torch.save(teacher_of(seed=1, init_seconds=1.0).model.state_dict(), other)
    explicit = EncodecTeacher(EncodecParams(weights=str(other)))
    assert explicit.fingerprint() != loaded.fingerprint()
    assert explicit.fingerprint_payload() != loaded.fingerprint_payload()  # weights, not just the path
    assert not torch.equal(explicit.targets(wav, n).values, loaded.targets(wav, n).values)


def test_missing_weights_say_which_file_goes_where(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    expected = tmp_path / "hub" / "checkpoints" / CHECKPOINT_NAME
    with pytest.raises(WeightsError) as err:
        get_registry().build("teacher", "encodec", {})
    message = str(err.value)
    assert str(expected) in message and f"https://dl.fbaipublicfiles.com/encodec/v0/{CHECKPOINT_NAME}" in message
    assert "params.weights" in message and "pretrained: false" in message and "\n" not in message
    with pytest.raises(WeightsError, match="nope.th .*does not exist"):
        EncodecTeacher(EncodecParams(weights=str(tmp_path / "nope.th")))


def test_foreign_weights_file_is_one_clear_error(tmp_path):
    bad = tmp_path / "bad.th"
    torch.save({"encoder.weight": torch.zeros(3)}, bad)
    with pytest.raises(WeightsError, match=r"cannot load weights file .*bad.th: RuntimeError: .*Missing key") as err:
        EncodecTeacher(EncodecParams(weights=str(bad)))
    assert "\n" not in str(err.value)
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="bad.th: damaged or truncated weights file"):
        EncodecTeacher(EncodecParams(weights=str(bad)))


def test_other_sample_rates_are_resampled_by_the_caller(teacher):
    # The contract: audio arrives at teacher.sample_rate; a 16 kHz clip is resampled first.
    clip_16k = music(16_000, 9, sr=16_000)
    wav = torchaudio.functional.resample(clip_16k, 16_000, teacher.sample_rate)[None]
    out = teacher.targets(wav, torch.tensor([wav.shape[1]]))
    assert wav.shape[1] == SR and out.lengths.tolist() == [75]  # one second -> 75 frames
