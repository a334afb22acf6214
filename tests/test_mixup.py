"""In-batch mixup (MERT): property tests of the built-in ``mixup`` augmentation plugin."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mertlab.plugins.augmentations.mixup import mixup

FAST = settings(max_examples=30, deadline=None)
SAMPLES = 48


pytestmark = pytest.mark.usefixtures("one_thread")


def padded_batch(lengths: list[int], seed: int, samples: int = SAMPLES) -> tuple[torch.Tensor, torch.Tensor]:
    """Random clips (Gaussian: no window of one clip is proportional to a window of another)
    with zeros past each clip's length; float64 so that ``mixed - wav`` recovers the added crop."""
    lengths_t = torch.tensor(lengths)
    wav = torch.randn(len(lengths), samples, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    wav[torch.arange(samples)[None, :] >= lengths_t[:, None]] = 0.0
    return wav, lengths_t


def explain(added: torch.Tensor, wav: torch.Tensor, lengths: list[int], i: int, max_gain: float):
    """Every (partner, source offset, gain) for which ``added`` = mixed[i] - wav[i] is
    ``gain * wav[partner, source:source + crop]`` placed inside clip ``i``."""
    nonzero = added.nonzero().flatten()
    dest = int(nonzero[0])
    found = []
    for j in range(wav.shape[0]):
        crop = min(lengths[i], lengths[j])
        segment = added[dest : dest + crop]
        if crop == 0 or dest + crop > lengths[i] or added[:dest].any() or added[dest + crop :].any():
            continue
        for source in range(lengths[j] - crop + 1):
            window = wav[j, source : source + crop]
            gain = float(segment @ window / (window @ window))
            residual = torch.linalg.vector_norm(segment - gain * window)
            if residual <= 1e-6 * torch.linalg.vector_norm(segment) + 1e-12 and -1e-6 <= gain <= max_gain * (1 + 1e-5):
                found.append((j, source, gain))
    return found


lengths_strategy = st.lists(st.integers(0, SAMPLES), min_size=2, max_size=5)


@FAST
@given(
    lengths=lengths_strategy,
    probability=st.floats(0.0, 1.0),
    max_gain=st.one_of(st.just(0.0), st.floats(0.01, 2.0)),
    seed=st.integers(0, 2**31 - 1),
)
def test_each_clip_gets_a_gained_crop_of_another_clip_inside_its_length(lengths, probability, max_gain, seed):
    wav, lengths_t = padded_batch(lengths, seed)
    before = wav.clone()
    mixed = mixup(wav, lengths_t, probability, max_gain, torch.Generator().manual_seed(seed + 1))
    assert torch.equal(wav, before), "mixup must not modify its input"
    assert mixed.shape == wav.shape
    padding = torch.arange(SAMPLES)[None, :] >= lengths_t[:, None]
    assert torch.all(mixed[padding] == 0), "padding must stay zero"
    for i in range(len(lengths)):
        added = mixed[i] - wav[i]
        if not added.any():
            continue
        found = explain(added, wav, lengths, i, max_gain)
        assert found, f"clip {i}: the added signal is not a gained crop of any clip"
        if int((added != 0).sum()) >= 2:  # one sample is proportional to any other: not identifiable
            assert all(j != i for j, _, _ in found), f"clip {i} was mixed with itself"


@FAST
@given(lengths=lengths_strategy, seed=st.integers(0, 2**31 - 1))
def test_deterministic_for_a_generator_seed(lengths, seed):
    wav, lengths_t = padded_batch(lengths, seed)
    first = mixup(wav, lengths_t, 0.5, 0.5, torch.Generator().manual_seed(seed))
    again = mixup(wav, lengths_t, 0.5, 0.5, torch.Generator().manual_seed(seed))
    assert torch.equal(first, again)


def test_single_clip_is_returned_unchanged():
    wav, lengths = padded_batch([SAMPLES], 0)
    assert torch.equal(mixup(wav, lengths, 1.0, 1.0, torch.Generator().manual_seed(0)), wav)


@pytest.mark.parametrize("probability,max_gain", [(0.0, 1.0), (1.0, 0.0)])
def test_disabled_mixup_is_the_identity(probability, max_gain):
    wav, lengths = padded_batch([SAMPLES, 30, 10], 0)
    assert torch.equal(mixup(wav, lengths, probability, max_gain, torch.Generator().manual_seed(0)), wav)


def test_probability_is_the_share_of_mixed_clips():
    wav, lengths = padded_batch([SAMPLES] * 400, 0)
    mixed = mixup(wav, lengths, 0.3, 0.5, torch.Generator().manual_seed(0))
    share = (mixed != wav).any(dim=1).float().mean().item()
    assert 0.23 < share < 0.37  # binomial(400, 0.3): 3 standard deviations ~ 0.07


def test_probability_one_mixes_every_clip_with_partners_spread_over_the_batch():
    wav, lengths = padded_batch([SAMPLES] * 6, 3)
    partners = set()
    for seed in range(60):  # 12 draws per ordered pair on average
        mixed = mixup(wav, lengths, 1.0, 1.0, torch.Generator().manual_seed(seed))
        for i in range(6):
            found = explain(mixed[i] - wav[i], wav, [SAMPLES] * 6, i, 1.0)
            assert len(found) == 1 and found[0][0] != i
            partners.add((i, found[0][0]))
    assert len(partners) == 6 * 5  # every ordered pair of distinct clips shows up


@pytest.mark.parametrize(
    "wav,lengths,probability,max_gain,message",
    [
        (torch.zeros(4), torch.tensor([4]), 0.5, 0.5, r"\[batch, samples\]"),
        (torch.zeros(2, 4), torch.tensor([4]), 0.5, 0.5, "lengths of shape"),
        (torch.zeros(2, 4), torch.tensor([4, 4]), 1.5, 0.5, "probability"),
        (torch.zeros(2, 4), torch.tensor([4, 4]), 0.5, -1.0, "max_gain"),
    ],
)
def test_bad_arguments_are_refused(wav, lengths, probability, max_gain, message):
    with pytest.raises(ValueError, match=message):
        mixup(wav, lengths, probability, max_gain)
