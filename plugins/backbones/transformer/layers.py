"""Building blocks of the HuBERT/MERT backbone.

Module and attribute names mirror ``transformers.HubertModel`` on purpose: the backbone's
``state_dict`` keys are exactly Hugging Face's, so MERT/HuBERT checkpoints load without a key
table (see ``hf.py`` for the only renames: legacy weight-norm names and a model prefix).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import cast

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from mertlab.toolkit.attention import attention
from mertlab.toolkit.dropout import Dropout, dropout
from mertlab.toolkit.log_mel import LogMelFrontend

from .channels_last import channel_time_norm, channels_last_conv
from .params import Activation, TransformerParams


def make_activation(name: Activation) -> nn.Module:
    """The activation module for a params name (HF ``gelu`` is the exact erf GELU)."""
    return {
        "gelu": lambda: nn.GELU(),
        "gelu_tanh": lambda: nn.GELU(approximate="tanh"),
        "relu": lambda: nn.ReLU(),
        "silu": lambda: nn.SiLU(),
    }[name]()


# --------------------------------------------------------------------------- feature extractor
class ConvLayer(nn.Module):
    """Conv1d -> optional norm -> activation. ``norm``: None, "group" (GroupNorm with one group
    per channel: normalises each channel over *time*) or "layer" (LayerNorm over channels, per frame)."""

    def __init__(
        self, in_dim: int, out_dim: int, kernel: int, stride: int, bias: bool, norm: str | None, activation: Activation
    ):
        super().__init__()
        self.conv = nn.Conv1d(in_dim, out_dim, kernel_size=kernel, stride=stride, bias=bias)
        nn.init.kaiming_normal_(self.conv.weight)  # fairseq/HF wav2vec2 extractor init
        if norm == "group":
            self.layer_norm: nn.Module | None = nn.GroupNorm(out_dim, out_dim, affine=True)
        elif norm == "layer":
            self.layer_norm = nn.LayerNorm(out_dim, elementwise_affine=True)
        else:
            self.layer_norm = None
        self.norm = norm
        self.activation = make_activation(activation)

    def forward(self, x: Tensor) -> Tensor:
        """``[B, C, T]`` -> ``[B, C', T']`` with the ``torch.nn`` modules (any device)."""
        x = self.conv(x)
        if isinstance(self.layer_norm, nn.GroupNorm):
            x = self.layer_norm(x)
        elif isinstance(self.layer_norm, nn.LayerNorm):
            x = self.layer_norm(x.transpose(-2, -1)).transpose(-2, -1)
        return self.activation(x)

    def forward_channels_last(self, x: Tensor) -> Tensor:
        """The same function on ``[B, T, C]`` -> ``[B, T', C']`` as GEMMs (see ``channels_last.py``)."""
        x = channels_last_conv(x, self.conv.weight, self.conv.bias, self.conv.stride[0])
        if isinstance(self.layer_norm, nn.GroupNorm):
            exact_gelu = isinstance(self.activation, nn.GELU) and self.activation.approximate == "none"
            x = channel_time_norm(x, self.layer_norm.weight, self.layer_norm.bias, self.layer_norm.eps, gelu=exact_gelu)
            return x if exact_gelu else self.activation(x)
        if isinstance(self.layer_norm, nn.LayerNorm):
            x = self.layer_norm(x)
        return self.activation(x)


class FeatureExtractor(nn.Module):
    """Waveform ``[B, S]`` -> conv features ``[B, T, C]``.

    On CPU the layers run channels-last as GEMMs (:meth:`ConvLayer.forward_channels_last`: no
    layout copies in the backward pass, 1.5x faster than ``nn.Conv1d`` on HuBERT's extractor);
    elsewhere (CUDA: cuDNN) as ``nn.Conv1d``. ``channels_last=False`` forces the latter.
    """

    #: Use the channels-last GEMM path on CPU (set False on an instance to run nn.Conv1d there too).
    channels_last: bool = True

    def __init__(self, p: TransformerParams):
        super().__init__()
        dims = (1, *p.conv_channels)
        layers = []
        for i, (kernel, stride) in enumerate(zip(p.conv_kernels, p.conv_strides, strict=True)):
            norm: str | None
            if p.extractor_mode == "layer_norm":
                norm = "layer"
            else:  # group_norm: HF "group" normalises only the first layer
                norm = "group" if i == 0 else None
            layers.append(ConvLayer(dims[i], dims[i + 1], kernel, stride, p.conv_bias, norm, p.extractor_activation))
        self.conv_layers = nn.ModuleList(layers)

    def forward(self, wav: Tensor) -> Tensor:
        if self.channels_last and wav.device.type == "cpu":
            x = wav[:, :, None]
            for conv in cast(list[ConvLayer], self.conv_layers):
                x = conv.forward_channels_last(x)
            return x
        x = wav[:, None]
        for layer in self.conv_layers:
            x = layer(x)
        return x.transpose(1, 2)


class MelFeatureExtractor(nn.Module):
    """Waveform ``[B, S]`` -> normalised log-mel ``[B, ceil(S / hop), mel_bins]`` (``frontend: mel``)."""

    def __init__(self, p: TransformerParams):
        super().__init__()
        self.log_mel = LogMelFrontend(p.sample_rate, p.mel_n_fft, p.hop, p.mel_bins)

    def forward(self, wav: Tensor) -> Tensor:
        return self.log_mel(wav)


class FeatureProjection(nn.Module):
    """(LayerNorm) -> Linear(frontend features -> hidden) -> dropout, per frame."""

    def __init__(self, p: TransformerParams):
        super().__init__()
        self.layer_norm = nn.LayerNorm(p.extractor_dim, eps=p.layer_norm_eps) if p.projection_layer_norm else None
        self.projection = nn.Linear(p.extractor_dim, p.hidden_dim)
        self.dropout = Dropout(p.projection_dropout)

    def forward(self, features: Tensor) -> Tensor:
        if self.layer_norm is not None:
            features = self.layer_norm(features)
        return self.dropout(self.projection(features))


# --------------------------------------------------------------------------- positional conv
class PositionalConvEmbedding(nn.Module):
    """Grouped conv over time with weight norm (``dim=2`` like fairseq/HF); the even-kernel
    extra frame is dropped ("same" padding)."""

    def __init__(self, p: TransformerParams):
        super().__init__()
        k, d = p.pos_conv_kernel, p.hidden_dim
        conv = nn.Conv1d(d, d, kernel_size=k, padding=k // 2, groups=p.pos_conv_groups)
        # fairseq wav2vec2/HuBERT init (before weight norm): N(0, sqrt(4 / (k * d))), zero bias.
        nn.init.normal_(conv.weight, mean=0.0, std=math.sqrt(4.0 / (k * d)))
        nn.init.zeros_(cast(Tensor, conv.bias))  # created with bias=True
        self.conv = nn.utils.parametrizations.weight_norm(conv, name="weight", dim=2)
        self.num_pad_remove = 1 if k % 2 == 0 else 0
        self.activation = make_activation(p.extractor_activation)

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv(x.transpose(1, 2))
        if self.num_pad_remove:
            y = y[:, :, : -self.num_pad_remove]
        return self.activation(y).transpose(1, 2)


# --------------------------------------------------------------------------- attention
def masked_max(scores: Tensor, keep: Tensor | None) -> Tensor:
    """Max of ``scores`` ``[B, H, T, T]`` over valid (query, key) pairs, as a detached fp32 scalar."""
    scores = scores.detach().float()
    if keep is not None:
        valid = keep & keep.transpose(-1, -2)  # [B, 1, T, T]: both query and key are real frames
        scores = scores.masked_fill(~valid, float("-inf"))
    return scores.amax()


def relaxed_attention(
    q: Tensor, k: Tensor, v: Tensor, keep: Tensor | None, alpha: float, dropout_p: float
) -> tuple[Tensor, Tensor]:
    """CogView PB-relax attention (used by MERT-330M).

    softmax(QK^T/sqrt(d)) == softmax((Q/(sqrt(d)*alpha) K^T - rowmax) * alpha): the matmul runs on
    logits ``alpha`` times smaller and the subtraction bounds them by 0 before they are scaled
    back, so nothing overflows in fp16/bf16. The softmax runs in fp32.
    Returns the output ``[B, H, T, d]`` and the relaxed scores (true logits / alpha).
    """
    scores = (q * (1.0 / (math.sqrt(q.shape[-1]) * alpha))) @ k.transpose(-1, -2)
    if keep is not None:
        scores = scores.masked_fill(~keep, float("-inf"))
    # The row max is a constant shift of the softmax input: detaching it leaves the gradient exact.
    shifted = (scores - scores.amax(dim=-1, keepdim=True).detach()) * alpha
    probs = torch.softmax(shifted.float(), dim=-1).to(v.dtype)
    probs = dropout(probs, dropout_p, training=dropout_p > 0)
    return probs @ v, scores


class SelfAttention(nn.Module):
    """Multi-head self-attention: ``scaled_dot_product_attention`` or relaxed attention."""

    def __init__(self, p: TransformerParams):
        super().__init__()
        d = p.hidden_dim
        self.num_heads, self.head_dim = p.num_heads, p.head_dim
        self.dropout = p.attention_dropout
        self.relax = p.attention_relax
        # HF order (k, v, q, out) so state_dict key order matches too.
        self.k_proj = nn.Linear(d, d)
        self.v_proj = nn.Linear(d, d)
        self.q_proj = nn.Linear(d, d)
        self.out_proj = nn.Linear(d, d)

    def forward(self, x: Tensor, keep: Tensor | None, instrument: bool = False) -> tuple[Tensor, Tensor | None]:
        """``keep``: ``[B, 1, 1, T]`` True at real frames (None: no padding). Returns the output
        and, when ``instrument``, the max pre-softmax logit (detached scalar)."""
        b, t, _ = x.shape
        q, k, v = (
            proj(x).view(b, t, self.num_heads, self.head_dim).transpose(1, 2)
            for proj in (self.q_proj, self.k_proj, self.v_proj)
        )
        dropout_p = self.dropout if self.training else 0.0
        max_logit = None
        if self.relax is not None:
            out, scores = relaxed_attention(q, k, v, keep, self.relax, dropout_p)
            if instrument:
                max_logit = masked_max(scores, keep) * self.relax
        else:
            out = attention(q, k, v, keep, dropout_p)  # SDPA, or written out with dropout on CPU
            if instrument:
                # SDPA never materialises the logits: recompute them (fp32) only when asked.
                with torch.no_grad():
                    scores = (q.float() @ k.float().transpose(-1, -2)) / math.sqrt(self.head_dim)
                max_logit = masked_max(scores, keep)
        out = out.transpose(1, 2).reshape(b, t, -1)
        return self.out_proj(out), max_logit


class FeedForward(nn.Module):
    def __init__(self, p: TransformerParams):
        super().__init__()
        self.intermediate_dropout = Dropout(p.activation_dropout)
        self.intermediate_dense = nn.Linear(p.hidden_dim, p.ffn_dim)
        self.intermediate_act_fn = make_activation(p.activation)
        self.output_dense = nn.Linear(p.ffn_dim, p.hidden_dim)
        self.output_dropout = Dropout(p.dropout)

    def forward(self, x: Tensor) -> Tensor:
        x = self.intermediate_dropout(self.intermediate_act_fn(self.intermediate_dense(x)))
        return self.output_dropout(self.output_dense(x))


class EncoderLayer(nn.Module):
    """One transformer layer: post-LN (HF ``HubertEncoderLayer``, with optional DeepNorm residual
    scale) or pre-LN (HF ``HubertEncoderLayerStableLayerNorm``)."""

    def __init__(self, p: TransformerParams):
        super().__init__()
        self.attention = SelfAttention(p)
        self.dropout = Dropout(p.dropout)
        self.layer_norm = nn.LayerNorm(p.hidden_dim, eps=p.layer_norm_eps)
        self.feed_forward = FeedForward(p)
        self.final_layer_norm = nn.LayerNorm(p.hidden_dim, eps=p.layer_norm_eps)
        self.pre_ln = p.layer_norm_first
        # DeepNet (Wang et al. 2022), encoder-only: alpha = (2N)^(1/4) on the residual.
        self.residual_scale = (2.0 * p.num_layers) ** 0.25 if p.deepnorm else 1.0

    def _residual(self, x: Tensor) -> Tensor:
        return x if self.residual_scale == 1.0 else x * self.residual_scale

    def forward(self, x: Tensor, keep: Tensor | None, instrument: bool = False) -> tuple[Tensor, Tensor | None]:
        if self.pre_ln:
            h, max_logit = self.attention(self.layer_norm(x), keep, instrument)
            x = x + self.dropout(h)
            x = x + self.feed_forward(self.final_layer_norm(x))
        else:
            h, max_logit = self.attention(x, keep, instrument)
            x = self.layer_norm(self._residual(x) + self.dropout(h))
            x = self.final_layer_norm(self._residual(x) + self.feed_forward(x))
        return x, max_logit


@dataclass
class EncoderOutput:
    """Per-layer results of :class:`Encoder` (``hidden_states`` has ``num_layers + 1`` entries)."""

    hidden_states: tuple[Tensor, ...]
    attn_max_logits: list[Tensor] | None
    act_rms: list[Tensor] | None


def masked_rms(x: Tensor, pad: Tensor | None) -> Tensor:
    """RMS of ``x`` ``[B, T, D]`` over real frames, detached fp32 scalar."""
    power = x.detach().float().pow(2).mean(dim=-1)
    if pad is not None:
        power = power[~pad]
    return power.mean().sqrt()


class Encoder(nn.Module):
    """Positional conv + transformer layers (+ final LayerNorm for pre-LN), with layer drop and
    optional gradient checkpointing."""

    def __init__(self, p: TransformerParams):
        super().__init__()
        self.pos_conv_embed = PositionalConvEmbedding(p)
        self.layer_norm = nn.LayerNorm(p.hidden_dim, eps=p.layer_norm_eps)
        self.dropout = Dropout(p.dropout)
        self.layers = nn.ModuleList(EncoderLayer(p) for _ in range(p.num_layers))
        self.pre_ln = p.layer_norm_first
        self.layer_drop = p.layer_drop
        self.gradient_checkpointing = p.gradient_checkpointing
        # Layer-drop decisions come from this generator when the trainer seeded it (the same seed
        # on every rank: see Backbone.set_step_seed), else from the global RNG.
        self.layer_drop_generator: torch.Generator | None = None

    def forward(self, x: Tensor, pad: Tensor | None, instrument: bool = False) -> EncoderOutput:
        """``x`` ``[B, T, D]`` projected (and masked) features; ``pad`` ``[B, T]`` True at
        padding, or None when no clip is padded."""
        keep = None
        if pad is not None:
            x = x.masked_fill(pad[..., None], 0.0)  # as HF: padding must not leak through the pos conv
            keep = ~pad[:, None, None, :]
        x = x + self.pos_conv_embed(x)
        if not self.pre_ln:
            x = self.layer_norm(x)
        x = self.dropout(x)

        hidden = [x]
        max_logits: list[Tensor] = []  # filled when instrument
        rms: list[Tensor] = []
        for layer in self.layers:
            if (
                self.training
                and self.layer_drop > 0
                and torch.rand((), generator=self.layer_drop_generator) < self.layer_drop
            ):
                # Skipped layer: its hidden state repeats the input so indices stay layer numbers.
                if instrument:
                    max_logits.append(torch.tensor(float("nan"), device=x.device))
                    rms.append(masked_rms(x, pad))
                hidden.append(x)
                continue
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                x, max_logit = checkpoint(layer, x, keep, instrument, use_reentrant=False)
            else:
                x, max_logit = layer(x, keep, instrument)
            if instrument:
                max_logits.append(max_logit)
                rms.append(masked_rms(x, pad))
            hidden.append(x)
        if self.pre_ln:
            # The final LayerNorm belongs to the last output (HF last_hidden_state; MERT's own
            # HF code and transformers 4.x also put it in hidden_states[-1]).
            hidden[-1] = self.layer_norm(hidden[-1])
        return EncoderOutput(tuple(hidden), max_logits if instrument else None, rms if instrument else None)
