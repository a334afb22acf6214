"""align_targets: teacher frames onto the backbone's frame grid."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mertlab.contracts import TargetInfo, Targets
from mertlab.errors import MertlabError
from mertlab.toolkit.align import align_targets, mapped_lengths

RATES = st.sampled_from([75.0, 44100 / 512, 50.0, 25.0, 100.0, 24000 / 320, 16000 / 320, 37.5])
STOCK = settings(max_examples=30, deadline=None)


@st.composite
def batches(draw):
    """Source targets whose values encode (clip, frame) so each output names its source frame."""
    batch = draw(st.integers(1, 4))
    src_frames = draw(st.integers(0, 60))
    src_lengths = draw(st.lists(st.integers(0, src_frames), min_size=batch, max_size=batch))
    return batch, src_frames, torch.tensor(src_lengths)


def _coded(batch: int, src_frames: int, src_lengths: torch.Tensor, kind: str, rate: float) -> Targets:
    """Frame i of clip b holds 1000 * b + i (padding holds -1 so leaks are visible)."""
    frame = torch.arange(src_frames)[None, :].expand(batch, -1)
    code = 1000 * torch.arange(batch)[:, None] + frame
    code = torch.where(frame < src_lengths[:, None], code, torch.full_like(code, -1))
    if kind == "discrete":
        values = torch.stack([code, code], dim=-1)  # two codebooks
        info = TargetInfo("discrete", 2, rate, (4096, 4096))
    else:
        values = code[:, :, None].to(torch.float32)
        info = TargetInfo("continuous", 1, rate)
    return Targets(values, src_lengths, info)


@STOCK
@given(batches(), RATES, RATES, st.integers(0, 80), st.sampled_from(["discrete", "continuous"]), st.data())
def test_shape_lengths_and_values_from_valid_source_frames(src, src_rate, dst_rate, num_frames, kind, data):
    batch, src_frames, src_lengths = src
    frame_lengths = torch.tensor(data.draw(st.lists(st.integers(0, num_frames), min_size=batch, max_size=batch)))
    targets = _coded(batch, src_frames, src_lengths, kind, src_rate)

    out = align_targets(targets, dst_rate, num_frames, frame_lengths)

    assert out.values.shape == (batch, num_frames, targets.values.shape[2])
    assert out.values.dtype == targets.values.dtype
    assert out.info.frame_rate == dst_rate and out.info.kind == kind
    assert out.info.vocab_sizes == targets.info.vocab_sizes
    expected = [
        min(int(fl), math.ceil(int(sl) * dst_rate / src_rate - 1e-6))
        for fl, sl in zip(frame_lengths, src_lengths, strict=True)
    ]
    assert out.lengths.tolist() == expected
    for b in range(batch):
        n = int(out.lengths[b])
        valid = out.values[b, :n, 0].to(torch.float64) - 1000 * b  # source positions read
        # every value comes from (or between) this clip's valid source frames
        assert bool((valid >= 0).all()) and bool((valid <= int(src_lengths[b]) - 1).all())
        if kind == "discrete":
            assert bool((out.values[b, :n, 0] == out.values[b, :n, 1]).all())
        # the index mapping is monotone: later backbone frames never read earlier source frames
        assert bool((valid[1:] >= valid[:-1]).all())
        assert bool((out.values[b, n:] == 0).all())  # padding is zeros, not stale codes


@STOCK
@given(batches(), RATES, st.sampled_from(["discrete", "continuous"]))
def test_equal_rates_and_counts_are_the_identity(src, rate, kind):
    batch, src_frames, src_lengths = src
    targets = _coded(batch, src_frames, src_lengths, kind, rate)
    targets.values = targets.values.masked_fill(targets.padding_mask[:, :, None], 0)

    out = align_targets(targets, rate, src_frames, src_lengths)

    assert torch.equal(out.values, targets.values)
    assert torch.equal(out.lengths, src_lengths)


@STOCK
@given(RATES, RATES, st.integers(2, 60), st.floats(-3, 3), st.floats(-5, 5))
def test_continuous_interpolation_is_exact_on_a_linear_ramp(src_rate, dst_rate, src_len, slope, offset):
    values = (slope * torch.arange(src_len, dtype=torch.float64) + offset)[None, :, None].float()
    targets = Targets(values, torch.tensor([src_len]), TargetInfo("continuous", 1, src_rate))
    num_frames = 80

    out = align_targets(targets, dst_rate, num_frames, torch.tensor([num_frames]))

    n = int(out.lengths[0])
    pos = torch.arange(n, dtype=torch.float64) * src_rate / dst_rate
    # past the last valid source frame (p in (L-1, L)) the last value is held, not extrapolated
    want = slope * pos.clamp(max=src_len - 1) + offset
    assert torch.allclose(out.values[0, :n, 0].double(), want, atol=1e-4)


@STOCK
@given(batches(), RATES, RATES, st.integers(0, 80), st.sampled_from(["discrete", "continuous"]), st.data())
def test_integer_offsets_equal_dropping_leading_source_frames(src, src_rate, dst_rate, num_frames, kind, data):
    """A clip starting k source frames in (a crop sliced from cached targets) aligns like the
    source with its first k frames removed."""
    batch, src_frames, src_lengths = src
    frame_lengths = torch.tensor(data.draw(st.lists(st.integers(0, num_frames), min_size=batch, max_size=batch)))
    offsets = [data.draw(st.integers(0, int(n))) for n in src_lengths]
    targets = _coded(batch, src_frames, src_lengths, kind, src_rate)

    out = align_targets(targets, dst_rate, num_frames, frame_lengths, torch.tensor(offsets, dtype=torch.float64))

    for b, k in enumerate(offsets):
        alone = Targets(targets.values[b : b + 1, k:], src_lengths[b : b + 1] - k, targets.info)
        want = align_targets(alone, dst_rate, num_frames, frame_lengths[b : b + 1])
        assert torch.equal(out.values[b], want.values[0]) and out.lengths[b] == want.lengths[0]


def test_fractional_offset_reads_between_source_frames():
    values = torch.arange(10, dtype=torch.float32)[None, :, None]
    continuous = Targets(values, torch.tensor([10]), TargetInfo("continuous", 1, 75.0))
    discrete = Targets(values.long(), torch.tensor([10]), TargetInfo("discrete", 1, 75.0, (16,)))
    offset = torch.tensor([2.25], dtype=torch.float64)

    out = align_targets(continuous, 75.0, 8, torch.tensor([8]), offset)
    assert out.lengths.tolist() == [8]  # frames starting before source frame 10: 2.25 + j < 10
    assert torch.allclose(out.values[0, :7, 0], torch.arange(7) + 2.25)
    assert out.values[0, 7, 0] == 9  # p = 9.25: the last valid frame is held
    codes = align_targets(discrete, 75.0, 8, torch.tensor([8]), offset)
    assert codes.values[0, :, 0].tolist() == [2, 3, 4, 5, 6, 7, 8, 9]
    with pytest.raises(MertlabError, match="offsets must be"):
        align_targets(continuous, 75.0, 8, torch.tensor([8]), torch.tensor([-1.0]))


def test_cqt_one_extra_frame_is_dropped_at_equal_rate():
    # nnAudio CQT (centred): 1 + 24000 // 320 = 76 frames; backbone: 75 frames for the same 1 s.
    cqt = torch.randn(2, 76, 336)
    targets = Targets(cqt, torch.tensor([76, 51]), TargetInfo("continuous", 336, 75.0))

    out = align_targets(targets, 75.0, 75, torch.tensor([75, 50]))

    assert out.values.shape == (2, 75, 336)
    assert out.lengths.tolist() == [75, 50]
    assert torch.equal(out.values[0], cqt[0, :75])
    assert torch.equal(out.values[1, :50], cqt[1, :50])


def test_backbone_one_frame_longer_than_teacher_holds_the_last_frame_out():
    codes = torch.arange(74)[None, :, None]
    targets = Targets(codes, torch.tensor([74]), TargetInfo("discrete", 1, 75.0, (1024,)))

    out = align_targets(targets, 75.0, 75, torch.tensor([75]))

    assert out.lengths.tolist() == [74]  # frame 74 has no teacher frame: padding, not a guess
    assert torch.equal(out.values[0, :74, 0], torch.arange(74))


def test_dac_44k_rate_to_75_hz_uses_nearest_frames():
    dac_rate = 44100 / 512  # ~86.13 Hz, ceil(44100 / 512) = 87 frames for 1 s
    codes = torch.arange(87)[None, :, None].repeat(1, 1, 9)
    targets = Targets(codes, torch.tensor([87]), TargetInfo("discrete", 9, dac_rate, (1024,) * 9))

    out = align_targets(targets, 75.0, 75, torch.tensor([75]))

    want = torch.floor(torch.arange(75, dtype=torch.float64) * dac_rate / 75 + 0.5).long()
    assert out.lengths.tolist() == [75]
    assert torch.equal(out.values[0, :, 0], want)
    assert want[-1] == 85 and len(set(want.tolist())) == 75  # downsampling skips frames, never repeats


def test_mapped_lengths_tolerates_float_rates():
    assert mapped_lengths(torch.tensor([87]), 44100 / 512, 44100 / 512).tolist() == [87]
    assert mapped_lengths(torch.tensor([75, 0]), 75.0, 25.0).tolist() == [25, 0]


@pytest.mark.parametrize(
    "src_lengths, frame_lengths, num_frames, match",
    [
        ([11], [5], 10, "targets.lengths"),
        ([5], [11], 10, "frame_lengths"),
        ([5, 5], [5], 10, "lengths must be"),
    ],
)
def test_inconsistent_lengths_are_clear_errors(src_lengths, frame_lengths, num_frames, match):
    targets = Targets(
        torch.zeros(len(src_lengths), 10, 1), torch.tensor(src_lengths), TargetInfo("continuous", 1, 75.0)
    )
    with pytest.raises(MertlabError, match=match):
        align_targets(targets, 75.0, num_frames, torch.tensor(frame_lengths))
