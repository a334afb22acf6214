"""What every neural-codec teacher (:class:`mertlab.toolkit.codec_support.CodecTeacher`: ``encodec``,
``dac``) guarantees, checked on each built through the registry with random weights and
codebooks fitted on synthetic audio: seeded, diverse codes; ``ceil(n / hop)`` frames per clip;
a batch encoded exactly as clip by clip; checked input; a codec that stays frozen. What is
particular to one codec (weights files, bandwidths, model types) is in its own test file."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mertlab.errors import DataError
from mertlab.plugin_system.registry import get_registry
from mertlab.toolkit.codec_support import CodecTeacher
from synth_audio import gliding_tones

#: Params of each codec (16 kHz DAC keeps CPU time small) and how many of the frames of one
#: second of music must differ from each other (most of them).
CODECS = {
    "encodec": ({"pretrained": False, "init_seconds": 2.0}, 30),  # of 75 frames
    "dac": ({"model_type": "16khz", "pretrained": False, "init_seconds": 2.0}, 25),  # of 50 frames
}


pytestmark = pytest.mark.integration  # slow: codec models on CPU, about 1 min


def build(name: str, **params) -> CodecTeacher:
    return get_registry().build("teacher", name, {**CODECS[name][0], **params})


def music(teacher: CodecTeacher, n: int, seed: int = 0) -> torch.Tensor:
    return gliding_tones(n, seed, teacher.sample_rate)


@pytest.fixture(scope="module", params=sorted(CODECS))
def teacher(request) -> CodecTeacher:
    return build(request.param)


def test_same_input_and_params_give_same_codes(teacher):
    clip = music(teacher, teacher.sample_rate // 2, 3)
    wav, n = clip[None], torch.tensor([clip.numel()])
    first = teacher.targets(wav, n).values
    assert torch.equal(first, teacher.targets(wav.clone(), n).values)
    rebuilt = type(teacher)(teacher.Params(**CODECS[teacher.name][0]))  # the class itself, as the registry builds it
    assert torch.equal(first, rebuilt.targets(wav, n).values)
    assert rebuilt.fingerprint() == teacher.fingerprint()
    assert build(teacher.name, seed=1, init_seconds=0.5).fingerprint() != teacher.fingerprint()


def test_codes_are_diverse(teacher):
    codes = teacher.targets(music(teacher, teacher.sample_rate, 4)[None], torch.tensor([teacher.sample_rate])).values[0]
    for k in range(codes.shape[1]):
        assert codes[:, k].unique().numel() >= 4, f"codebook {k} uses {codes[:, k].unique().tolist()}"
    assert len({tuple(frame.tolist()) for frame in codes}) > CODECS[teacher.name][1]


@settings(max_examples=8, deadline=None)
@given(lengths=st.lists(st.integers(1, 6_000), min_size=1, max_size=3), garbage=st.floats(-1, 1))
def test_batch_equals_one_by_one(teacher, lengths, garbage):
    # Codec encoders pad the end of a clip (DAC's is not even causal): without per-length
    # grouping the padding, here garbage, would change the last frames of shorter clips.
    wav = torch.full((len(lengths), max(lengths) + teacher.hop_length + 1), garbage)
    for i, n in enumerate(lengths):
        wav[i, :n] = music(teacher, n, seed=i)
    batch = teacher.targets(wav, torch.tensor(lengths))
    for i, n in enumerate(lengths):
        alone = teacher.targets(wav[i : i + 1, :n], torch.tensor([n]))
        frames = int(batch.lengths[i])
        assert frames == math.ceil(n / teacher.hop_length) == teacher.num_frames(n) == int(alone.lengths[0])
        assert torch.equal(batch.values[i, :frames], alone.values[0])


def test_silent_short_and_bad_clips(teacher):
    sr, hop, vocab = teacher.sample_rate, teacher.hop_length, teacher.info.vocab_sizes[0]
    silent = teacher.targets(torch.zeros(2, sr // 4), torch.tensor([sr // 4, sr // 8]))
    assert silent.lengths.tolist() == [math.ceil(sr / 4 / hop), math.ceil(sr / 8 / hop)]
    assert silent.values.min() >= 0 and silent.values.max() < vocab
    assert torch.equal(silent.values, teacher.targets(torch.zeros(2, sr // 4), torch.tensor([sr // 4, sr // 8])).values)

    # Shorter than one hop: the codec pads it to one frame, alone or in a batch.
    wav = torch.zeros(2, sr // 4)
    wav[0], wav[1, :100] = music(teacher, sr // 4, 7), music(teacher, 100, 8)
    batch = teacher.targets(wav, torch.tensor([sr // 4, 100]))
    assert batch.lengths.tolist() == [math.ceil(sr / 4 / hop), 1]
    assert torch.equal(batch.values[1, :1], teacher.targets(wav[1:, :100], torch.tensor([100])).values[0])

    with pytest.raises(DataError, match="clip 1 has 0 valid samples"):
        teacher.targets(wav, torch.tensor([sr // 4, 0]))
    with pytest.raises(DataError, match=rf"expected 1\.\.{sr // 4}"):
        teacher.targets(wav, torch.tensor([sr, 10]))
    with pytest.raises(DataError, match="NaN or infinite"):
        teacher.targets(torch.full((1, 1000), float("nan")), torch.tensor([1000]))
    with pytest.raises(DataError, match="NaN or infinite"):
        teacher.targets(torch.full((1, 500), float("inf")), torch.tensor([500]))
    with pytest.raises(DataError, match=r"float mono audio \[batch, samples\]"):
        teacher.targets(wav[:, None], torch.tensor([10, 10]))


def test_stays_frozen(teacher):
    clip = music(teacher, teacher.sample_rate // 4, 9)
    wav, n = clip[None], torch.tensor([clip.numel()])
    before = teacher.targets(wav, n).values
    teacher.train()  # e.g. Lightning switching the whole module tree to training (DAC: quantizer dropout)
    assert not teacher.model.training and not any(p.requires_grad for p in teacher.parameters())
    assert torch.equal(teacher.targets(wav, n).values, before)
    assert torch.equal(teacher.targets(wav, n).values, before)  # no codebook (EMA) updates either
