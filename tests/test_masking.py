"""Span masking (HuBERT/MERT): property tests of the guarantees documented on SpanMasking."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mertlab.errors import MertlabError
from mertlab.plugin_system.registry import get_registry

FAST = settings(max_examples=30, deadline=None)


pytestmark = pytest.mark.usefixtures("one_thread")


def span_masking(**params):
    return get_registry().build("masking", "span", params)


def right_padding(lengths: list[int], frames: int) -> torch.Tensor:
    return torch.arange(frames)[None, :] >= torch.tensor(lengths)[:, None]


def runs(row: torch.Tensor) -> list[int]:
    """Lengths of the maximal runs of True in a 1-D bool tensor."""
    out, current = [], 0
    for value in row.tolist():
        if value:
            current += 1
        elif current:
            out.append(current)
            current = 0
    if current:
        out.append(current)
    return out


params_strategy = st.fixed_dictionaries(
    {
        "mask_prob": st.floats(0.0, 1.0),
        "span_length": st.integers(1, 12),
        "min_spans": st.integers(0, 4),
        "no_overlap": st.booleans(),
    }
)


def test_span_is_registered_with_mert_defaults():
    masking = span_masking()
    assert masking.params.mask_prob == 0.8 and masking.params.span_length == 5 and masking.params.min_spans == 2
    assert not masking.params.no_overlap


def test_every_param_has_a_default_and_a_description():
    for field_name, field in get_registry().get("masking", "span").params_model.model_fields.items():
        assert field.description and not field.is_required(), field_name


@pytest.mark.parametrize("params", [{"mask_prob": 1.5}, {"span_length": 0}, {"min_spans": -1}, {"span": 5}])
def test_bad_params_are_refused(params):
    with pytest.raises(MertlabError, match="masking 'span' params"):
        span_masking(**params)


def test_padding_mask_must_be_2d():
    with pytest.raises(ValueError, match=r"\[batch, frames\]"):
        span_masking()(torch.zeros(10, dtype=torch.bool))


@FAST
@given(
    params=params_strategy,
    padding=st.lists(st.lists(st.booleans(), min_size=30, max_size=30), min_size=1, max_size=4),
    seed=st.integers(0, 2**31 - 1),
)
def test_never_masks_padding_any_pattern(params, padding, seed):
    padding_mask = torch.tensor(padding)
    mask = span_masking(**params)(padding_mask, torch.Generator().manual_seed(seed))
    assert mask.shape == padding_mask.shape and mask.dtype == torch.bool
    assert not (mask & padding_mask).any()


@FAST
@given(
    params=params_strategy, lengths=st.lists(st.integers(0, 80), min_size=1, max_size=5), seed=st.integers(0, 2**31 - 1)
)
def test_deterministic_for_a_generator_seed(params, lengths, seed):
    masking = span_masking(**params)
    padding = right_padding(lengths, 80)
    first = masking(padding, torch.Generator().manual_seed(seed))
    again = masking(padding, torch.Generator().manual_seed(seed))
    assert torch.equal(first, again)


def test_different_seeds_give_different_masks():
    masking, padding = span_masking(), right_padding([200, 200], 200)
    masks = {tuple(masking(padding, torch.Generator().manual_seed(s)).flatten().tolist()) for s in range(5)}
    assert len(masks) == 5


@FAST
@given(
    mask_prob=st.floats(0.1, 0.9),
    span=st.integers(1, 10),
    length=st.integers(1500, 3000),
    seed=st.integers(0, 2**31 - 1),
)
def test_overlapping_fraction_matches_expectation_for_long_clips(mask_prob, span, length, seed):
    """Spans start at distinct frames chosen uniformly: a frame stays visible when none of the
    ``span`` starts covering it is drawn, so ~(1 - mask_prob/span)**span of frames stay visible."""
    # 8 clips: the batch fraction has a standard deviation below 0.01 (the bound is > 4 of them)
    mask = span_masking(mask_prob=mask_prob, span_length=span)(
        right_padding([length] * 8, length), torch.Generator().manual_seed(seed)
    )
    expected = 1 - (1 - mask_prob / span) ** span
    assert abs(mask.float().mean().item() - expected) < 0.04


@FAST
@given(
    mask_prob=st.floats(0.05, 1.0),
    span=st.integers(1, 10),
    length=st.integers(200, 3000),
    seed=st.integers(0, 2**31 - 1),
)
def test_no_overlap_fraction_is_mask_prob_up_to_one_span(mask_prob, span, length, seed):
    mask = span_masking(mask_prob=mask_prob, span_length=span, no_overlap=True, min_spans=0)(
        right_padding([length], length), torch.Generator().manual_seed(seed)
    )
    # int(mask_prob * L / span + u) spans of exactly `span` frames, capped at L // span
    assert abs(mask.sum().item() - mask_prob * length) <= span


def test_mert_defaults_mask_about_58_percent():
    masking = span_masking()
    mask = masking(right_padding([375] * 64, 375), torch.Generator().manual_seed(0))  # 64 clips of 5 s at 75 Hz
    assert 0.54 < mask.float().mean().item() < 0.62


@FAST
@given(
    params=params_strategy, lengths=st.lists(st.integers(0, 60), min_size=1, max_size=5), seed=st.integers(0, 2**31 - 1)
)
def test_span_structure_and_minimum_coverage(params, lengths, seed):
    span, min_spans = params["span_length"], params["min_spans"]
    mask = span_masking(**params)(right_padding(lengths, 60), torch.Generator().manual_seed(seed))
    for row, length in zip(mask, lengths, strict=True):
        masked = int(row.sum())
        if length == 0:
            assert masked == 0
            continue
        if length <= span:  # one truncated span covers a short clip (when any span is drawn)
            assert masked in (0, length) and (masked == length or min_spans == 0)
            continue
        if params["no_overlap"]:
            # disjoint full spans: every run of masked frames is a whole number of spans
            assert all(r % span == 0 for r in runs(row)), runs(row)
            assert masked >= span * min(min_spans, length // span)
        else:
            # every span lies fully inside the clip: runs are at least one span long
            assert all(r >= span for r in runs(row)), runs(row)
            if min_spans:
                assert masked >= min(length, span + min(min_spans, length - span + 1) - 1)


def test_spans_cover_valid_frames_of_non_suffix_padding():
    """Padding in the middle (e.g. a concatenation) is skipped: spans are laid over valid frames."""
    padding = torch.zeros(1, 40, dtype=torch.bool)
    padding[0, 10:30] = True
    mask = span_masking(mask_prob=1.0, span_length=2, no_overlap=True)(padding, torch.Generator().manual_seed(0))
    assert mask[0, :10].all() and mask[0, 30:].all() and not mask[0, 10:30].any()


def test_works_without_a_generator():
    mask = span_masking()(right_padding([50, 20], 50))
    assert mask[0].any() and mask[1].any() and not mask[1, 20:].any()
