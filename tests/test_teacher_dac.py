"""DAC teacher: real descript-audio-codec models (random init with fitted codebooks), and
loading weights files the test writes with DAC's own saver, read back by DAC's own loader.
What every codec teacher guarantees (determinism, batching, input checks) is checked on DAC
too, in test_codec_teachers.py."""

import math
from functools import partial

import pytest
import torch

from mertlab.errors import MertlabError, WeightsError
from mertlab.plugin_system.registry import get_registry
from mertlab.plugins.teachers.dac import DACParams, DACTeacher, default_weights
from synth_audio import gliding_tones

SR = 16_000  # the 16 kHz model keeps CPU time small; 44.1 kHz is checked on its own
music = partial(gliding_tones, sr=SR)


def teacher_of(**params) -> DACTeacher:
    return DACTeacher(DACParams(**{"model_type": "16khz", "pretrained": False, "init_seconds": 2.0, **params}))


@pytest.fixture(scope="module")
def teacher() -> DACTeacher:
    return teacher_of()


@pytest.mark.integration  # slow: DAC models on CPU
def test_kind_shape_frame_rate_dtype(teacher):
    wav = torch.zeros(2, SR // 2)
    wav[0], wav[1, :5_000] = music(SR // 2, 1), music(5_000, 2)
    out = teacher.targets(wav, torch.tensor([SR // 2, 5_000]))
    assert teacher.target_kind == "discrete" and teacher.sample_rate == SR
    assert out.info == teacher.info
    assert (out.info.kind, out.info.dim, out.info.frame_rate, out.info.vocab_sizes) == (
        "discrete",
        12,
        50.0,
        (1024,) * 12,
    )
    assert out.values.dtype == torch.int64 and out.values.shape == (2, 25, 12)
    # DAC pads to whole hops (320 samples): 5000 samples -> 16 frames
    assert out.lengths.tolist() == [25, 16] == [teacher.num_frames(SR // 2), math.ceil(5_000 / 320)]
    assert out.values.min() >= 0 and out.values.max() < 1024


@pytest.mark.integration  # slow: DAC models on CPU
def test_44khz_frame_rate_is_not_whole():
    teacher = DACTeacher(DACParams(pretrained=False, init_seconds=0.5, n_codebooks=4))  # model_type 44khz
    n = 10_000
    out = teacher.targets(music(n, 3, sr=44_100)[None], torch.tensor([n]))
    assert teacher.sample_rate == 44_100 and teacher.info.frame_rate == pytest.approx(86.1328125)
    assert out.values.shape == (1, math.ceil(n / 512), 4) and out.lengths.tolist() == [20]


@pytest.mark.integration  # slow: DAC models on CPU
def test_n_codebooks_keeps_the_first_codebooks(teacher):
    wav, n = music(SR // 2, 5)[None], torch.tensor([SR // 2])
    first_three = teacher_of(n_codebooks=3)
    assert first_three.info.dim == 3
    assert torch.equal(first_three.targets(wav, n).values, teacher.targets(wav, n).values[..., :3])


@pytest.mark.parametrize(
    "params, message",
    [
        ({"model_type": "24khz", "model_bitrate": "16kbps"}, "16kbps exists only for model_type 44khz"),
        ({"model_type": "16khz", "n_codebooks": 13}, "exceeds the 12 codebooks of DAC 16khz 8kbps"),
        ({"model_type": "48khz"}, "model_type"),
        ({"pretrained": False, "weights": "w.pth"}, "weights is set but pretrained is false"),
    ],
)
def test_bad_params_are_clear_errors(params, message):
    with pytest.raises(MertlabError, match=message):
        get_registry().build("teacher", "dac", params)


@pytest.mark.integration  # slow: DAC models on CPU
def test_loads_weights_saved_by_dac_from_its_cache_and_explicit_path(teacher, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    cached, _url = default_weights("16khz", "8kbps")
    assert cached == tmp_path / ".cache" / "descript" / "dac" / "weights_16khz_8kbps_0.0.5.pth"
    cached.parent.mkdir(parents=True)
    teacher.model.save(str(cached), package=False)  # the format of the released weights
    wav, n = music(SR // 2, 6)[None], torch.tensor([SR // 2])

    loaded = DACTeacher(DACParams(model_type="16khz"))  # pretrained: true, default location
    assert all(torch.equal(v, loaded.model.state_dict()[k]) for k, v in teacher.model.state_dict().items())
    assert torch.equal(loaded.targets(wav, n).values, teacher.targets(wav, n).values)
    assert loaded.fingerprint_payload() == teacher.fingerprint_payload()

    other = tmp_path / "other.pth"
    teacher_of(seed=1, init_seconds=0.5).model.save(str(other), package=False)
    explicit = DACTeacher(DACParams(model_type="16khz", weights=str(other), n_codebooks=4))
    assert explicit.fingerprint_payload() != loaded.fingerprint_payload()
    assert not torch.equal(explicit.targets(wav, n).values, loaded.targets(wav, n).values[..., :4])

    # A file of another model is refused rather than encoding at the wrong rate.
    with pytest.raises(WeightsError, match="16000 Hz model, but model_type 24khz is 24000 Hz"):
        DACTeacher(DACParams(model_type="24khz", weights=str(cached)))


def test_missing_weights_say_which_file_goes_where(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    expected = tmp_path / ".cache" / "descript" / "dac" / "weights_44khz_8kbps_0.0.1.pth"
    with pytest.raises(WeightsError) as err:
        get_registry().build("teacher", "dac", {})
    message = str(err.value)
    assert str(expected) in message and "releases/download/0.0.1/weights.pth" in message
    assert "params.weights" in message and "pretrained: false" in message and "\n" not in message
    with pytest.raises(WeightsError, match="missing.pth .*does not exist"):
        DACTeacher(DACParams(weights=str(tmp_path / "missing.pth")))


def test_foreign_weights_file_is_one_clear_error(tmp_path):
    bad = tmp_path / "bad.pth"
    torch.save({"state_dict": {"encoder.x": torch.zeros(2)}, "metadata": {"kwargs": {"sample_rate": 16000}}}, bad)
    with pytest.raises(WeightsError, match=r"cannot load weights file .*bad.pth: RuntimeError: .*Missing key") as err:
        DACTeacher(DACParams(model_type="16khz", weights=str(bad)))
    assert "\n" not in str(err.value)
