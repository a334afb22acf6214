"""Tests of the ``conformer`` backbone (plugins/backbones/conformer.py)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mertlab.errors import DataError, MertlabError, UnknownComponentError
from mertlab.plugin_system.registry import get_registry
from mertlab.plugins.backbones.conformer import PRESETS, ConformerBackbone, ConformerParams
from mertlab.toolkit.checkpoint import load_backbone, save_backbone

#: Frontend/subsampling variants for the frame-count property: default 75 Hz, MusicFM's 25 Hz,
#: 25 Hz via an extra stride-3 layer, and a short-window odd-hop config.
FRAME_CONFIGS = {
    "75hz": {},
    "25hz_hop240": {"hop_length": 240},
    "25hz_stride3": {"subsampling_strides": [2, 2, 3]},
    "odd": {"hop_length": 97, "n_fft": 256, "subsampling_strides": [3], "subsampling_kernel": 5},
}
_MODELS: dict[str, ConformerBackbone] = {}


def tiny(**overrides) -> ConformerBackbone:
    """Tiny conformer in eval mode with dropout off (deterministic)."""
    torch.manual_seed(0)
    params = ConformerParams(preset="tiny", dropout=0.0, attention_dropout=0.0, **overrides)
    return ConformerBackbone(params).eval()


def _frame_model(name: str) -> ConformerBackbone:
    if name not in _MODELS:
        _MODELS[name] = tiny(**FRAME_CONFIGS[name])
    return _MODELS[name]


# --------------------------------------------------------------------------- registry / params
def test_registry_lists_and_builds_from_preset():
    registry = get_registry()
    assert "conformer" in [e.name for e in registry.list("backbone", "conf*")]
    model = registry.build("backbone", "conformer", {"preset": "tiny"})
    assert isinstance(model, ConformerBackbone)
    assert (model.hidden_dim, model.num_layers, model.sample_rate) == (64, 2, 24000)
    assert model.frame_rate == 75.0
    assert ConformerBackbone(ConformerParams(preset="tiny", hop_length=240)).frame_rate == 25.0


@pytest.mark.parametrize("preset", list(PRESETS))
def test_preset_resolves_and_revalidates_equal(preset):
    params = ConformerParams(preset=preset)
    for field, value in PRESETS[preset].items():
        assert getattr(params, field) == value
    assert ConformerParams.model_validate(params.model_dump()) == params
    assert ConformerParams.model_validate(params.model_dump(mode="json")) == params
    # an explicit field wins over the preset
    assert ConformerParams(preset=preset, num_layers=3).num_layers == 3


def test_preset_parameter_counts():
    def count(preset: str) -> int:
        with torch.device("meta"):  # shapes only: skips allocating and initialising weights
            return sum(p.numel() for p in ConformerBackbone(ConformerParams(preset=preset)).parameters())

    counts = {preset: count(preset) for preset in PRESETS}
    assert counts["tiny"] < 1_000_000
    assert 15e6 < counts["small"] < 50e6
    assert 85e6 < counts["base"] < 110e6  # next to MERT-95M
    assert 300e6 < counts["large"] < 370e6  # next to MERT-330M
    assert ConformerParams() == ConformerParams(preset="base").model_copy(update={"preset": None})


@pytest.mark.parametrize(
    "params, field, words",
    [
        ({"preset": "tiny", "num_heads": 5}, "num_heads", "must divide hidden_dim"),
        ({"hidden_dim": 64}, "num_heads", "must divide hidden_dim"),  # default 12 heads checked too
        ({"hidden_dim": 60, "num_heads": 12}, "pos_encoding", "even head dim"),
        ({"conv_kernel": 30}, "conv_kernel", "must be odd"),
        ({"hop_length": 4096}, "hop_length", "<= n_fft"),
        ({"sample_rate": 16000, "f_max": 9000}, "f_max", "Nyquist"),
        ({"f_min": 13000}, "f_max", "below f_max"),
        ({"subsampling_strides": [2, 5]}, "subsampling_kernel", ">= every subsampling stride"),
        ({"subsampling_strides": [0]}, "subsampling_strides.0", "greater than or equal to 1"),
        ({"preset": "huge"}, "preset", "'tiny'"),
        ({"hiden_dim": 64}, "hiden_dim", "Extra inputs"),
    ],
)
def test_bad_params_name_the_field(params, field, words):
    with pytest.raises(UnknownComponentError) as err:
        get_registry().build("backbone", "conformer", params)
    assert f"params.{field}: " in str(err.value) and words in str(err.value)


def test_hidden_60_heads_10_is_valid_with_rotary():
    # head dim 6 is even: accepted (guards against an over-eager validator)
    assert ConformerParams(hidden_dim=60, num_heads=10).num_heads == 10


# --------------------------------------------------------------------------- shapes
@settings(max_examples=25, deadline=None)
@given(config=st.sampled_from(sorted(FRAME_CONFIGS)), num_samples=st.integers(1, 4000))
def test_frame_count_formula(config, num_samples):
    model = _frame_model(config)
    with torch.no_grad():
        out = model(torch.randn(1, num_samples))
    expected = model.num_frames(num_samples)
    assert out.last_hidden_state.shape == (1, expected, model.hidden_dim)
    assert len(out.hidden_states) == model.num_layers + 1
    assert out.padding_mask.shape == (1, expected) and not out.padding_mask.any()
    assert out.frame_rate == model.frame_rate
    assert model.frame_lengths(torch.tensor([num_samples])).tolist() == [expected]


def test_frame_count_matches_encodec_at_75hz():
    model = _frame_model("75hz")
    # ceil(S / 320): what EnCodec 24 kHz produces, so its codes align frame for frame
    for num_samples in (1, 319, 320, 321, 24000, 120000):
        assert model.num_frames(num_samples) == -(-num_samples // 320)


# --------------------------------------------------------------------------- masking / padding
def test_mask_embedding_replaces_exactly_the_masked_frames():
    model = tiny()
    wav = torch.randn(2, 3200)
    frame_mask = torch.zeros(2, model.num_frames(3200), dtype=torch.bool)
    frame_mask[0, [1, 2, 5]] = True
    frame_mask[1, [0, 9]] = True
    with torch.no_grad():
        plain = model(wav).hidden_states[0]
        masked = model(wav, frame_mask=frame_mask).hidden_states[0]
    differs = (plain - masked).abs().amax(-1) > 0
    assert torch.equal(differs, frame_mask)
    assert torch.equal(masked[frame_mask], model.mask_embedding.detach().expand(int(frame_mask.sum()), -1))


def test_padding_invariance():
    model = tiny()
    lengths = [5000, 2333, 100]  # 100 samples: shorter than the n_fft window
    clips = [torch.randn(n) for n in lengths]
    batch = torch.randn(len(clips), max(lengths)) * 10  # junk past each clip's length must be ignored
    for i, clip in enumerate(clips):
        batch[i, : len(clip)] = clip
    frame_mask = torch.zeros(len(clips), model.num_frames(max(lengths)), dtype=torch.bool)
    frame_mask[:, 1] = True
    with torch.no_grad():
        out = model(batch, torch.tensor(lengths), frame_mask=frame_mask, instrument=True)
        for i, clip in enumerate(clips):
            frames = model.num_frames(len(clip))
            assert out.padding_mask[i].tolist() == [False] * frames + [True] * (out.padding_mask.shape[1] - frames)
            alone = model(clip[None], frame_mask=frame_mask[i : i + 1, :frames])
            for h_batch, h_alone in zip(out.hidden_states, alone.hidden_states, strict=True):
                torch.testing.assert_close(h_batch[i, :frames], h_alone[0], atol=1e-4, rtol=1e-4)
                assert not h_batch[i, frames:].any()  # padded frames are zero
    assert all(torch.isfinite(v) for v in out.attn_max_logits + out.act_rms)


def test_bad_inputs_raise_clear_errors():
    model = tiny()
    with pytest.raises(DataError, match="lengths"):
        model(torch.randn(2, 800), torch.tensor([800, 0]))
    with pytest.raises(MertlabError, match="frame_mask must have shape"):
        model(torch.randn(1, 800), frame_mask=torch.zeros(1, 4, dtype=torch.bool))


# --------------------------------------------------------------------------- training options
def _grads(model: ConformerBackbone, wav: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
    model.zero_grad()
    torch.manual_seed(1)  # same dropout draws in both runs
    out = model(wav, torch.tensor([wav.shape[1], wav.shape[1] - 700]), frame_mask=mask)
    sum(h.pow(2).mean() for h in out.hidden_states).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_gradient_checkpointing_gives_same_gradients():
    torch.manual_seed(0)
    plain = ConformerBackbone(ConformerParams(preset="tiny", dropout=0.1, attention_dropout=0.1)).train()
    ckpt = ConformerBackbone(plain.params.model_copy(update={"gradient_checkpointing": True})).train()
    ckpt.load_state_dict(plain.state_dict())
    wav = torch.randn(2, 4000)
    mask = torch.zeros(2, plain.num_frames(4000), dtype=torch.bool)
    mask[:, 3:6] = True
    expected, got = _grads(plain, wav, mask), _grads(ckpt, wav, mask)
    assert expected.keys() == got.keys() and "mask_embedding" in got and "layers.1.conv.depthwise.weight" in got
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], atol=1e-6, rtol=1e-5, msg=name)


@pytest.mark.parametrize("pos_encoding", ["rotary", "none"])
def test_bf16_autocast_forward_and_backward_finite(pos_encoding):
    model = tiny(pos_encoding=pos_encoding).train()
    wav = torch.randn(2, 3000)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(wav, torch.tensor([3000, 1800]), instrument=True)
        loss = out.last_hidden_state.float().pow(2).mean()
    assert all(torch.isfinite(h).all() for h in out.hidden_states)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_instrumentation_only_when_requested():
    model = tiny()
    wav = torch.randn(2, 2400)
    lengths = torch.tensor([2400, 1000])
    off = model(wav, lengths)
    assert off.attn_max_logits is None and off.act_rms is None
    residuals = []  # each block's residual stream entering its final LayerNorm
    hooks = [
        layer.final_norm.register_forward_pre_hook(lambda m, args: residuals.append(args[0])) for layer in model.layers
    ]
    on = model(wav, lengths, instrument=True)
    for hook in hooks:
        hook.remove()
    assert len(on.attn_max_logits) == len(on.act_rms) == model.num_layers
    assert all(v.dim() == 0 and not v.requires_grad and torch.isfinite(v) for v in on.attn_max_logits + on.act_rms)
    valid = ~on.padding_mask
    for rms, residual in zip(on.act_rms, residuals, strict=True):
        torch.testing.assert_close(rms, residual.detach()[valid].pow(2).mean().sqrt())
    # the max logit bounds the logits of valid (query, key) pairs: scaling the first block's
    # queries/keys by 2 (weights and biases) scales every logit, and so the max, by 4
    with torch.no_grad():
        model.layers[0].attention.qkv.weight[: 2 * model.hidden_dim] *= 2
        model.layers[0].attention.qkv.bias[: 2 * model.hidden_dim] *= 2
        scaled = model(wav, lengths, instrument=True)
    torch.testing.assert_close(scaled.attn_max_logits[0], 4 * on.attn_max_logits[0])
    # instrumenting does not change the features
    for a, b in zip(off.hidden_states, on.hidden_states, strict=True):
        torch.testing.assert_close(a, b)
    with torch.no_grad():
        assert model(wav, lengths).attn_max_logits is None


def test_rotary_positions_make_attention_order_aware():
    # With rotary the encoder output at a frame depends on where a context frame sits; with no
    # positions the encoder (conv module aside) is permutation-equivariant, so compare layer
    # outputs of the attention path only through a kernel-1 conv module.
    wav = torch.randn(1, 3200)
    outs = {}
    for pos in ("rotary", "none"):
        model = tiny(pos_encoding=pos, conv_kernel=1)
        with torch.no_grad():
            x = model(wav).hidden_states[0]
            perm = torch.randperm(x.shape[1])
            pad = torch.zeros(1, x.shape[1], dtype=torch.bool)
            rotary = None
            if pos == "rotary":
                from mertlab.plugins.backbones.conformer import _rotary_tables

                rotary = _rotary_tables(x.shape[1], model.hidden_dim // model.params.num_heads, 10000.0, x.device)
            y, _ = model.layers[0](x, pad, rotary, False)
            y_perm, _ = model.layers[0](x[:, perm], pad, rotary, False)
        outs[pos] = (y[:, perm] - y_perm).abs().max().item()
    assert outs["none"] < 1e-5 < outs["rotary"]


def test_block_names_partition_parameters():
    model = tiny()
    groups = model.block_names()
    assert list(groups) == ["frontend", "subsampling", "layer0", "layer1", "mask_embedding"]
    for name, _ in model.named_parameters():
        owners = [g for g, prefixes in groups.items() if any(name.startswith(p) for p in prefixes)]
        assert len(owners) == 1, (name, owners)
    assert "frontend" not in tiny(learnable_mel_norm=False).block_names()


def test_save_load_roundtrip_without_stft_kernels(tmp_path):
    model = tiny()
    assert not any(key.startswith("frontend.mel.") for key in model.state_dict())
    path = save_backbone(tmp_path / "conformer.pt", model)
    loaded = load_backbone(path)
    wav = torch.randn(1, 1600)
    with torch.no_grad():
        torch.testing.assert_close(loaded(wav).last_hidden_state, model(wav).last_hidden_state)
