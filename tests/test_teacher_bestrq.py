"""The `bestrq` teacher: frozen random projection + random codebook of stacked log-mels."""

from __future__ import annotations

import math

import pytest
import torch

from mertlab.errors import MertlabError
from mertlab.plugin_system.registry import get_registry
from synth_audio import SR, melody, padded_batch


def build(**params):
    return get_registry().build("teacher", "bestrq", params)


def test_registered_with_musicfm_recipe_on_a_75_hz_grid():
    teacher = build()
    info = teacher.info
    assert (info.kind, info.dim, info.frame_rate, info.vocab_sizes) == ("discrete", 1, 75.0, (4096,))
    assert teacher.sample_rate == SR and teacher.target_kind == "discrete" and not teacher.requires_fit
    assert teacher.projection.shape == (1, 128 * 4, 16) and teacher.codebooks.shape == (1, 4096, 16)
    assert torch.allclose(teacher.codebooks.norm(dim=-1), torch.ones(1, 4096))
    xavier_std = math.sqrt(2 / (128 * 4 + 16))
    assert abs(teacher.projection.std().item() - xavier_std) < 0.05 * xavier_std


def test_kind_shape_dtype_and_diverse_codes():
    out = build().targets(melody(1.0, seed=1)[None], torch.tensor([SR]))
    assert out.values.shape == (1, 75, 1) and out.values.dtype == torch.int64
    assert out.lengths.tolist() == [(1 + SR // 80) // 4]
    assert bool(((out.values >= 0) & (out.values < 4096)).all())
    assert out.values.unique().numel() >= 10


def test_frame_rate_follows_hop_and_stack():
    teacher = build(hop_length=240, stack_frames=4, codebook_size=64)  # MusicFM's 25 Hz
    assert teacher.info.frame_rate == 25.0
    assert teacher.targets(melody(1.0)[None], torch.tensor([SR])).values.shape == (1, 25, 1)


def test_seeded_deterministic_and_persisted_in_state_dict():
    wav, lengths = melody(0.5, seed=2)[None], torch.tensor([12000])
    a, b, c = build(seed=3), build(seed=3), build(seed=4)
    assert torch.equal(a.targets(wav, lengths).values, b.targets(wav, lengths).values)
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()
    assert not torch.equal(a.targets(wav, lengths).values, c.targets(wav, lengths).values)
    assert set(a.state_dict()) >= {"projection", "codebooks"}
    c.load_state_dict(a.state_dict())  # the module state, not the seed, defines the codes
    assert torch.equal(c.targets(wav, lengths).values, a.targets(wav, lengths).values)
    assert c.fingerprint() != build(seed=4).fingerprint()


def test_several_independent_codebooks():
    teacher = build(n_codebooks=3, codebook_size=256)
    assert teacher.info.vocab_sizes == (256,) * 3 and teacher.info.dim == 3
    out = teacher.targets(melody(0.6, seed=5)[None], torch.tensor([14400]))
    assert out.values.shape == (1, 45, 3)
    assert not torch.equal(out.values[..., 0], out.values[..., 1])
    assert not torch.equal(out.values[..., 1], out.values[..., 2])


def test_batch_equals_one_by_one_with_junk_padding():
    teacher = build(n_codebooks=2)
    clips = [melody(0.7, seed=6), melody(0.33, seed=7), melody(0.5, seed=8)]
    wav, lengths = padded_batch(clips, pad_value=-0.4)
    batch = teacher.targets(wav, lengths)
    for b, clip in enumerate(clips):
        alone = teacher.targets(clip[None], torch.tensor([clip.numel()]))
        n = int(alone.lengths[0])
        assert int(batch.lengths[b]) == n == (1 + clip.numel() // 80) // 4
        assert torch.equal(batch.values[b, :n], alone.values[0])
        assert bool((batch.values[b, n:] == 0).all())


def test_per_clip_normalisation_makes_codes_gain_invariant():
    teacher = build()
    wav, lengths = melody(0.8, seed=9)[None], torch.tensor([19200])
    quiet = teacher.targets(wav, lengths).values
    loud = teacher.targets(3 * wav, lengths).values
    assert (quiet == loud).float().mean() > 0.95
    raw = build(normalize="none")
    assert (raw.targets(wav, lengths).values == raw.targets(3 * wav, lengths).values).float().mean() < 0.5


def test_silent_and_too_short_clips():
    teacher = build()
    silent = teacher.targets(torch.zeros(2, 8000), torch.tensor([8000, 4000]))
    assert silent.lengths.tolist() == [25, 12] and bool((silent.values == 0).all())  # documented: code 0
    assert teacher.targets(torch.randn(1, 240), torch.tensor([240])).values.shape == (1, 1, 1)
    with pytest.raises(MertlabError, match=r"clip 1 has 100 samples, shorter than one frame \(needs >= 240"):
        teacher.targets(torch.randn(2, 4000), torch.tensor([4000, 100]))
    with pytest.raises(MertlabError, match="stack_frames"):
        build(stack_frames=0)
