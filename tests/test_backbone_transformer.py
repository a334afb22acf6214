"""The ``transformer`` backbone: params/presets, frames, masking, padding, attention relaxation,
DeepNorm, layer drop, gradient checkpointing, autocast, instrumentation, CLI model-info."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from mertlab.cli import main
from mertlab.errors import DataError, MertlabError, UnknownComponentError
from mertlab.plugin_system.registry import get_registry
from mertlab.plugins.backbones.transformer import PRESETS, TransformerBackbone, TransformerParams
from mertlab.plugins.backbones.transformer import layers as layers_module
from mertlab.plugins.backbones.transformer.layers import relaxed_attention
from mertlab.toolkit.checkpoint import load_backbone, save_backbone

SR = 24000
TINY = {"preset": "tiny"}
# MERT-330M's stability options (pre-LN, relaxation 32, layer-norm extractor) at tiny width.
LARGE_STYLE_TINY = {
    "preset": "large",
    "hidden_dim": 64,
    "num_heads": 4,
    "ffn_dim": 128,
    "num_layers": 2,
    "conv_channels": [32] * 7,
    "pos_conv_kernel": 16,
    "pos_conv_groups": 4,
}


def build(**overrides) -> TransformerBackbone:
    return get_registry().build("backbone", "transformer", {**TINY, **overrides})


MEL_TINY = build(frontend="mel", mel_bins=32, mel_n_fft=512).eval()


def no_dropout(**overrides) -> dict:
    return {
        "dropout": 0.0,
        "attention_dropout": 0.0,
        "activation_dropout": 0.0,
        "projection_dropout": 0.0,
        "layer_drop": 0.0,
        **overrides,
    }


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# --------------------------------------------------------------------------- registry + params
def test_registered_and_listed_by_cli(capsys):
    assert "transformer" in get_registry().names("backbone")
    assert main(["plugins", "--kind", "backbone"]) == 0
    assert "transformer" in capsys.readouterr().out


@pytest.mark.parametrize("preset", [None, "tiny", "small", "base", "large"])
def test_resolved_params_revalidate_to_an_equal_object(preset):
    params = TransformerParams(preset=preset)
    assert TransformerParams.model_validate(params.model_dump(mode="json")) == params
    for field, value in PRESETS.get(preset, {}).items():
        assert getattr(params, field) == value


def test_preset_fills_only_unset_fields():
    params = TransformerParams(preset="large", num_layers=4, attention_relax=8.0)
    assert (params.num_layers, params.attention_relax) == (4, 8.0)  # explicit values win
    assert (params.hidden_dim, params.num_heads, params.ffn_dim) == (1024, 16, 4096)
    assert params.layer_norm_first and params.extractor_mode == "layer_norm"
    base = TransformerParams(preset="base")
    assert (base.num_layers, base.hidden_dim, base.ffn_dim, base.num_heads) == (12, 768, 3072, 12)
    assert not base.layer_norm_first and base.attention_relax is None
    assert base == TransformerParams(preset=None).model_copy(update={"preset": "base"})  # defaults = MERT-95M


def test_tiny_preset_is_small_and_keeps_the_mert_hop():
    backbone = build()
    assert n_params(backbone) < 1_000_000
    assert backbone.params.hop == 320 and backbone.params.receptive_field == 400
    assert backbone.frame_rate == 75.0 and backbone.sample_rate == SR


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"hidden_dim": 64, "num_heads": 5}, "num_heads (5) must divide hidden_dim (64)"),
        ({"conv_kernels": [10, 3], "conv_strides": [5, 2, 2]}, "one entry per conv layer"),
        ({"pos_conv_groups": 3}, "pos_conv_groups (3) must divide hidden_dim (64)"),
        ({"deepnorm": True, "layer_norm_first": True}, "cannot be combined with layer_norm_first"),
        ({"attention_relax": 0}, "greater than 0"),
        ({"dropout": 1.0}, "less than 1"),
        ({"conv_channels": []}, "at least 1 item"),
        ({"preset": "huge"}, "'tiny', 'small', 'base' or 'large'"),
        ({"num_layer": 3}, "Extra inputs are not permitted"),
    ],
)
def test_bad_params_give_clear_validation_errors(params, message):
    with pytest.raises(ValidationError, match=message.replace("(", r"\(").replace(")", r"\)")):
        TransformerParams(**{**TINY, **params})
    with pytest.raises(UnknownComponentError, match="backbone 'transformer' params"):
        get_registry().build("backbone", "transformer", {**TINY, **params})


# --------------------------------------------------------------------------- frames
def test_num_frames_closed_form_equals_nested_conv_lengths():
    backbone = build(preset="base")
    p = backbone.params

    def nested(length: int) -> int:  # HF _get_feat_extract_output_lengths, applied per layer
        for k, s in zip(p.conv_kernels, p.conv_strides, strict=True):
            if length < k:
                return 0
            length = (length - k) // s + 1
        return length

    samples = list(range(0, 5000)) + [SR * 5, SR * 30 + 17]
    assert [backbone.num_frames(s) for s in samples] == [nested(s) for s in samples]
    assert backbone.frame_lengths(torch.tensor(samples)).tolist() == [nested(s) for s in samples]
    assert backbone.num_frames(SR * 5) == 374  # 5 s MERT crops


@pytest.fixture(scope="module")
def tiny_eval() -> TransformerBackbone:
    return TransformerBackbone(TransformerParams(**TINY)).eval()


@settings(max_examples=25, deadline=None)
@given(num_samples=st.integers(min_value=400, max_value=12_000), batch=st.integers(min_value=1, max_value=2))
def test_produced_frames_equal_num_frames(tiny_eval, num_samples, batch):
    with torch.no_grad():
        out = tiny_eval(torch.randn(batch, num_samples))
    assert out.last_hidden_state.shape == (batch, tiny_eval.num_frames(num_samples), 64)
    assert out.extractor_features.shape == (batch, tiny_eval.num_frames(num_samples), 32)


def test_output_contract():
    backbone = build().eval()
    lengths = torch.tensor([8000, 5000])
    with torch.no_grad():
        out = backbone(torch.randn(2, 8000), lengths)
    t = backbone.num_frames(8000)
    assert len(out.hidden_states) == backbone.num_layers + 1
    assert all(h.shape == (2, t, 64) for h in out.hidden_states)
    assert out.padding_mask.tolist() == [[i >= n for i in range(t)] for n in backbone.frame_lengths(lengths).tolist()]
    assert out.frame_rate == 75.0
    assert out.extractor_features.shape == (2, t, 32)
    assert out.attn_max_logits is None and out.act_rms is None  # instrumentation off by default


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda b: b(torch.randn(1, 399)), DataError, "backbone's receptive field"),
        (lambda b: b(torch.randn(2, 4000), torch.tensor([4000, 4001])), DataError, "lengths must lie in"),
        (lambda b: b(torch.randn(2, 4000), torch.tensor([4000, 100])), DataError, "lengths must lie in"),
        (
            lambda b: b(torch.randn(1, 4000), frame_mask=torch.zeros(1, 3, dtype=torch.bool)),
            MertlabError,
            "frame_mask must be bool",
        ),
        (lambda b: b(torch.randn(4000)), MertlabError, "expects wav"),
    ],
)
def test_bad_inputs_raise_clear_errors(call, error, message):
    with pytest.raises(error, match=message):
        call(build().eval())


# --------------------------------------------------------------------------- masking
def test_mask_embedding_replaces_exactly_the_masked_frames():
    backbone = build(**no_dropout()).eval()
    wav = torch.randn(2, 6000)
    t = backbone.num_frames(6000)
    frame_mask = torch.zeros(2, t, dtype=torch.bool)
    frame_mask[0, 3:8] = True
    frame_mask[1, [0, 10, 11]] = True
    seen = []
    backbone.encoder.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach().clone()))
    with torch.no_grad():
        backbone(wav)
        backbone(wav, frame_mask=frame_mask)
    plain, masked = seen
    assert torch.equal(masked[~frame_mask], plain[~frame_mask])
    assert torch.equal(masked[frame_mask], backbone.masked_spec_embed.detach().expand(int(frame_mask.sum()), -1))
    assert not torch.allclose(plain[frame_mask], masked[frame_mask])


def test_mask_embedding_gets_gradient_only_when_used():
    backbone = build(**no_dropout())
    wav = torch.randn(1, 4000)
    backbone(wav).last_hidden_state.sum().backward()
    assert backbone.masked_spec_embed.grad is None
    frame_mask = torch.zeros(1, backbone.num_frames(4000), dtype=torch.bool)
    frame_mask[0, 2] = True
    out = backbone(wav, frame_mask=frame_mask).last_hidden_state
    # a random projection: the plain sum of a (post-)LayerNorm output is constant (sum of its
    # bias), so its gradient is zero up to rounding noise
    (out * torch.randn(out.shape, generator=torch.Generator().manual_seed(0))).sum().backward()
    assert backbone.masked_spec_embed.grad.abs().sum() > 1e-4


# --------------------------------------------------------------------------- padding
def _alone_vs_padded(extractor_mode: str) -> list[float]:
    torch.manual_seed(0)
    backbone = build(**no_dropout(extractor_mode=extractor_mode)).eval()
    clip = torch.randn(1, 5000)
    batch = torch.randn(2, 9000)  # the padding region holds garbage, not zeros
    batch[0, :5000] = clip[0]
    with torch.no_grad():
        alone = backbone(clip)
        padded = backbone(batch, torch.tensor([5000, 9000]))
    t = backbone.num_frames(5000)
    assert not padded.padding_mask[0, :t].any() and padded.padding_mask[0, t:].all()
    return [
        (a[0] - p[0, :t]).abs().max().item() for a, p in zip(alone.hidden_states, padded.hidden_states, strict=True)
    ]


def test_mel_frontend_is_padding_invariant():
    torch.manual_seed(0)
    backbone = build(**no_dropout(frontend="mel")).eval()
    clip = torch.randn(1, 5000)
    batch = torch.randn(2, 9000)  # garbage after the clip, which its last STFT windows would see
    batch[0, :5000] = clip[0]
    with torch.no_grad():
        alone = backbone(clip)
        padded = backbone(batch, torch.tensor([5000, 9000]))
    t = backbone.num_frames(5000)
    assert t == math.ceil(5000 / 320) and alone.hidden_states[0].shape[1] == t
    assert not padded.padding_mask[0, :t].any() and padded.padding_mask[0, t:].all()
    assert (
        max(
            (a[0] - p[0, :t]).abs().max().item() for a, p in zip(alone.hidden_states, padded.hidden_states, strict=True)
        )
        < 1e-4
    )


@given(st.integers(min_value=1, max_value=20000))
@settings(max_examples=15, deadline=None)
def test_mel_frontend_frame_count_is_ceil_of_samples_over_hop(num_samples):
    backbone = MEL_TINY
    with torch.no_grad():
        out = backbone(torch.zeros(1, num_samples))
    assert out.hidden_states[-1].shape[1] == backbone.num_frames(num_samples) == math.ceil(num_samples / 320)
    assert backbone.frame_lengths(torch.tensor([num_samples])).item() == math.ceil(num_samples / 320)
    assert backbone.frame_rate == 75.0


@pytest.mark.parametrize("mult", [0.0, 0.1])
def test_feature_grad_mult_scales_only_the_frontend_gradient(mult):
    torch.manual_seed(0)
    wav = torch.randn(2, 4000)
    grads = {}
    outputs = {}
    for factor in (1.0, mult):
        torch.manual_seed(1)
        backbone = build(**no_dropout(feature_grad_mult=factor))
        out = backbone(wav)
        out.hidden_states[-1].pow(2).mean().backward()
        outputs[factor] = out.hidden_states[-1].detach()
        grads[factor] = {n: p.grad.clone() for n, p in backbone.named_parameters() if p.grad is not None}
    torch.testing.assert_close(outputs[1.0], outputs[mult])  # forward unchanged
    for name, grad in grads[1.0].items():
        if name.startswith("feature_extractor."):
            if mult == 0.0:
                assert name not in grads[mult]
            else:
                torch.testing.assert_close(grads[mult][name], grad * mult, rtol=1e-4, atol=1e-8)
        else:
            torch.testing.assert_close(grads[mult][name], grad)


EXTRACTORS = [
    {},  # HuBERT/MERT-95M shape: group norm + exact GELU (fused) on the first layer, no bias
    {"extractor_activation": "gelu_tanh"},  # group norm, then a separate activation
    {"extractor_mode": "layer_norm", "conv_bias": True},  # MERT-330M shape
    {"conv_channels": [16, 24], "conv_kernels": [7, 2], "conv_strides": [2, 5]},  # kernel < stride
    {"conv_channels": [32], "conv_kernels": [2048], "conv_strides": [320]},  # the quickstart's filterbank
]


@pytest.mark.parametrize("overrides", EXTRACTORS)
@given(batch=st.integers(1, 3), extra=st.integers(0, 700))
@settings(max_examples=8, deadline=None)
def test_channels_last_extractor_equals_nn_conv1d(overrides, batch, extra):
    """The CPU GEMM path (channels_last.py) computes nn.Conv1d/GroupNorm/LayerNorm's function
    and gradients, for any batch, length and kernel/stride shape."""
    torch.manual_seed(batch * 1000 + extra)
    extractor = build(**overrides).feature_extractor.double()
    wav = torch.randn(batch, extractor.conv_layers[0].conv.kernel_size[0] * 3 + 2400 + extra, dtype=torch.float64)
    results = {}
    for channels_last in (True, False):
        extractor.channels_last = channels_last  # this instance only
        extractor.zero_grad(set_to_none=True)
        x = wav.clone().requires_grad_()
        features = extractor(x)
        (features * torch.linspace(-1, 1, features.shape[-1], dtype=torch.float64)).pow(2).sum().backward()
        results[channels_last] = (features.detach(), x.grad, {n: p.grad for n, p in extractor.named_parameters()})
    (f_ours, gx_ours, gp_ours), (f_ref, gx_ref, gp_ref) = results[True], results[False]
    torch.testing.assert_close(f_ours, f_ref)
    torch.testing.assert_close(gx_ours, gx_ref)
    assert gp_ours.keys() == gp_ref.keys()
    for name in gp_ref:
        torch.testing.assert_close(gp_ours[name], gp_ref[name], msg=name)


def test_channels_last_extractor_runs_in_the_autocast_dtype():
    extractor = build().feature_extractor
    wav = torch.randn(2, 8000)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        features = extractor(wav)
        extractor.channels_last = False
        reference = extractor(wav)
    assert features.dtype == reference.dtype == torch.bfloat16
    torch.testing.assert_close(features.float(), reference.float(), rtol=0.05, atol=0.05)


def test_mel_frontend_has_no_hf_equivalent():
    from mertlab.plugins.backbones.transformer.hf import hf_config_from_params

    with pytest.raises(MertlabError, match="frontend.*mel.*Hugging Face"):
        hf_config_from_params(TransformerParams(preset="tiny", frontend="mel"))


def test_layer_norm_extractor_is_padding_invariant():
    assert max(_alone_vs_padded("layer_norm")) < 1e-5


def test_group_norm_extractor_is_not_padding_invariant():
    # Documented: GroupNorm normalises over the whole padded time axis, so a padded clip differs
    # from the clip alone (as in MERT-95M).
    assert min(_alone_vs_padded("group_norm")) > 1e-3


# --------------------------------------------------------------------------- attention relaxation
def _pair(**overrides):
    """A plain and a relaxed tiny backbone with identical weights."""
    torch.manual_seed(0)
    plain = build(**no_dropout(**overrides))
    relaxed = build(**no_dropout(attention_relax=32.0, **overrides))
    relaxed.load_state_dict(plain.state_dict())
    return plain, relaxed


def test_relaxed_attention_equals_plain_attention_in_fp32():
    plain, relaxed = _pair()
    wav, lengths = torch.randn(2, 7000), torch.tensor([7000, 4500])
    out_p, out_r = plain(wav, lengths), relaxed(wav, lengths)
    for a, b in zip(out_p.hidden_states, out_r.hidden_states, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    # A random linear read-out (a LayerNorm output's sum of squares would be nearly constant).
    readout = torch.randn_like(out_p.last_hidden_state)
    (out_p.last_hidden_state * readout).sum().backward()
    (out_r.last_hidden_state * readout).sum().backward()
    for (name, a), b in zip(plain.named_parameters(), relaxed.parameters(), strict=True):
        if a.grad is not None:
            torch.testing.assert_close(a.grad, b.grad, atol=1e-5, rtol=1e-4, msg=name)


def test_relaxation_takes_its_own_computation_path(monkeypatch):
    calls = []
    sdpa = F.scaled_dot_product_attention

    def counting_sdpa(*args, **kwargs):
        calls.append(1)
        return sdpa(*args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", counting_sdpa)
    plain, relaxed = _pair()
    wav = torch.randn(1, 4000)
    relaxed(wav)
    assert calls == []
    plain(wav)
    assert len(calls) == plain.num_layers


@pytest.mark.parametrize(("dtype", "magnitude"), [(torch.float16, 120.0), (torch.bfloat16, 1e19)])
def test_relaxed_attention_stays_finite_where_plain_attention_overflows(dtype, magnitude):
    torch.manual_seed(0)
    q = torch.randn(1, 2, 12, 16) * magnitude
    k, v = q.clone(), torch.randn(1, 2, 12, 16)
    scale = 16**-0.5
    reference = torch.softmax((q.double() @ k.double().transpose(-1, -2)) * scale, -1) @ v.double()
    qh, kh, vh = q.to(dtype), k.to(dtype), v.to(dtype)
    # Textbook attention in half precision: QK^T overflows, softmax gives NaN.
    plain = torch.softmax((qh @ kh.transpose(-1, -2)) * scale, dim=-1) @ vh
    assert not torch.isfinite(plain).all()
    relaxed, _ = relaxed_attention(qh, kh, vh, None, alpha=32.0, dropout_p=0.0)
    assert torch.isfinite(relaxed).all()
    torch.testing.assert_close(relaxed.double(), reference, atol=2e-2, rtol=2e-2)


# --------------------------------------------------------------------------- DeepNorm, layer drop
def test_deepnorm_scales_residuals_and_init():
    torch.manual_seed(0)
    backbone = build(**no_dropout(deepnorm=True, num_layers=4, hidden_dim=128, ffn_dim=256)).eval()
    alpha = (2 * 4) ** 0.25
    layer = backbone.encoder.layers[0]
    x = torch.randn(2, 9, 128)
    y = layer.layer_norm(alpha * x + layer.attention(x, None)[0])
    expected = layer.final_layer_norm(alpha * y + layer.feed_forward(y))
    torch.testing.assert_close(layer(x, None)[0], expected)
    # DeepNet init: value/output/FFN weights shrunk by (8N)^(1/4) relative to q/k.
    ratio = layer.attention.q_proj.weight.std() / layer.attention.v_proj.weight.std()
    assert ratio.item() == pytest.approx((8 * 4) ** 0.25, rel=0.1)


def test_layer_drop_skips_layers_in_training_only():
    backbone = build(**no_dropout(layer_drop=0.5, num_layers=6))
    wav = torch.randn(1, 4000)
    torch.manual_seed(1)
    expected = [i for i in range(6) if torch.rand(()) < 0.5]  # one draw per layer, as the encoder does
    assert 0 < len(expected) < 6
    torch.manual_seed(1)
    out = backbone(wav, instrument=True)
    hidden = out.hidden_states
    skipped = [i for i in range(6) if torch.equal(hidden[i], hidden[i + 1])]
    assert skipped == expected and len(hidden) == 7
    assert [i for i, m in enumerate(out.attn_max_logits) if math.isnan(m)] == skipped
    with torch.no_grad():
        hidden = backbone.eval()(wav).hidden_states
    assert not any(torch.equal(hidden[i], hidden[i + 1]) for i in range(6))


# --------------------------------------------------------------------------- checkpointing, autocast
def test_gradient_checkpointing_gives_the_same_gradients(monkeypatch):
    calls = []
    original = layers_module.checkpoint

    def counting_checkpoint(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(layers_module, "checkpoint", counting_checkpoint)
    torch.manual_seed(0)
    ref = build(layer_drop=0.0)  # dropouts on: checkpoint must replay the same RNG
    ckpt = build(layer_drop=0.0, gradient_checkpointing=True)
    ckpt.load_state_dict(ref.state_dict())
    wav, lengths = torch.randn(2, 6000), torch.tensor([6000, 4000])
    grads = []
    for model in (ref, ckpt):
        torch.manual_seed(1)
        out = model(wav, lengths)
        sum(h.square().mean() for h in out.hidden_states).backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    assert len(calls) == ckpt.num_layers
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], atol=1e-6, rtol=1e-5, msg=name)


@pytest.mark.parametrize("overrides", [TINY, LARGE_STYLE_TINY], ids=["base-style", "large-style"])
def test_bf16_autocast_forward_and_backward_are_finite(overrides):
    torch.manual_seed(0)
    backbone = build(**{**overrides, "layer_drop": 0.0})
    wav, lengths = torch.randn(2, 8000), torch.tensor([8000, 6000])
    frame_mask = torch.rand(2, backbone.num_frames(8000)) < 0.5
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = backbone(wav, lengths, frame_mask, instrument=True)
    assert all(torch.isfinite(h).all() for h in out.hidden_states)
    assert all(torch.isfinite(m) for m in out.attn_max_logits + out.act_rms)
    out.last_hidden_state.float().square().mean().backward()
    assert all(torch.isfinite(p.grad).all() for p in backbone.parameters() if p.grad is not None)
    backbone.eval()
    with torch.no_grad():
        ref = backbone(wav, lengths).last_hidden_state
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = backbone(wav, lengths).last_hidden_state.float()
    assert F.cosine_similarity(ref.flatten(), low.flatten(), dim=0) > 0.99


# --------------------------------------------------------------------------- instrumentation
@pytest.mark.parametrize("relax", [None, 32.0])
def test_instrumentation_reports_max_logit_and_rms_without_changing_outputs(relax):
    torch.manual_seed(0)
    backbone = build(**no_dropout(attention_relax=relax)).eval()
    wav, lengths = torch.randn(2, 7000), torch.tensor([7000, 4000])
    with torch.no_grad():
        off = backbone(wav, lengths)
        on = backbone(wav, lengths, instrument=True)
    for a, b in zip(off.hidden_states, on.hidden_states, strict=True):
        assert torch.equal(a, b)
    real = ~on.padding_mask
    for i, layer in enumerate(backbone.encoder.layers):
        x = on.hidden_states[i]  # post-LN: a layer's attention input is the previous hidden state
        attn = layer.attention
        per_clip = []
        for b in range(2):
            xb = x[b, real[b]]
            q = attn.q_proj(xb).view(-1, 4, 16).transpose(0, 1)
            k = attn.k_proj(xb).view(-1, 4, 16).transpose(0, 1)
            per_clip.append(((q @ k.transpose(-1, -2)) / 4.0).max())
        assert on.attn_max_logits[i].item() == pytest.approx(max(per_clip).item(), rel=1e-4)
        rms = on.hidden_states[i + 1][real].square().mean().sqrt()
        assert on.act_rms[i].item() == pytest.approx(rms.item(), rel=1e-5)
        assert not on.attn_max_logits[i].requires_grad


# --------------------------------------------------------------------------- blocks, persistence
def test_block_names_cover_every_parameter_once():
    backbone = build(num_layers=3)
    blocks = backbone.block_names()
    assert {"feature_extractor", "feature_projection", "pos_conv", "mask_embedding", "layer0", "layer2"} <= set(blocks)
    for name, _ in backbone.named_parameters():
        owners = [b for b, prefixes in blocks.items() if any(name.startswith(p) for p in prefixes)]
        assert len(owners) == 1, (name, owners)


def test_save_and_load_backbone_roundtrip(tmp_path):
    backbone = build(preset="tiny", attention_relax=16.0).eval()
    path = save_backbone(tmp_path / "b.pt", backbone)
    loaded = load_backbone(path)
    assert loaded.params == backbone.params
    wav = torch.randn(1, 4000)
    with torch.no_grad():
        assert torch.equal(backbone(wav).last_hidden_state, loaded(wav).last_hidden_state)


# --------------------------------------------------------------------------- model-info CLI
def test_model_info_for_a_backbone_name(capsys):
    assert main(["model-info", "transformer", "-o", "preset=tiny", "-o", "num_layers=3"]) == 0
    out = capsys.readouterr().out
    expected = n_params(build(num_layers=3))
    assert f"{expected:,}" in out and "75 Hz" in out and "tiny" in out
    assert [line.split()[-1] for line in out.splitlines() if line.startswith(("layers", "hidden dim"))] == ["64", "3"]


def test_model_info_for_a_spec_file_and_large_preset(tmp_path, capsys):
    spec = tmp_path / "exp.yaml"
    spec.write_text("name: x\nbackbone:\n  name: transformer\n  params: {preset: base}\n")
    assert main(["model-info", str(spec), "-o", "backbone.params.preset=large"]) == 0
    out = capsys.readouterr().out
    assert "315,435,136" in out and "1024" in out and "large" in out  # = HubertModel (tests/test_hf_compat.py)


def test_model_info_reports_bad_params(capsys):
    assert main(["model-info", "transformer", "-o", "num_heads=7"]) == 1
    err = capsys.readouterr().err
    assert "params: " in err and "num_heads (7) must divide hidden_dim (768)" in err
