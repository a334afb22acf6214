"""``conformer``: a MusicFM-style conformer backbone (log-mel frontend, conv subsampling, conformer blocks).

Pipeline (shapes for a batch ``[B, S]`` of 24 kHz audio)::

    wav -> log-mel (nnAudio, fp32)         [B, n_mels, ceil(S / hop)]
        -> per-bin affine normalisation     (learnable, initialised from mel_db_mean/std)
        -> conv2d subsampling (strides)     [B, T, channels * F']       = extractor_features
        -> linear projection + LayerNorm    [B, T, D]
        -> mask embedding at frame_mask     hidden_states[0]
        -> conformer blocks                 hidden_states[1..L]

MusicFM (Won et al. 2023, "A Foundation Model for Music Informatics"; minzwon/musicfm) uses a 128-bin
log-mel (n_fft 2048, hop 240 at 24 kHz), two stride-2 conv blocks (4x subsampling -> 25 Hz) and
12 wav2vec2-conformer layers with rotary positions. Our defaults keep that frontend but use hop 80,
so the frame rate is 24000 / (80 * 4) = 75 Hz: the MERT/EnCodec rate, so the same teachers
(EnCodec: exactly the same frame count; CQT with hop 320: up to an edge frame) line up with it. For MusicFM's 25 Hz set
``hop_length: 240`` (or keep hop 80 and use ``subsampling_strides: [2, 2, 3]``).

Frame count (exact; see :meth:`ConformerBackbone.num_frames`): ``ceil(S / hop)`` mel frames, then
each subsampling layer of stride ``s`` maps ``L -> ceil(L / s)``; with hop 80 and strides (2, 2)
that is ``ceil(S / 320)``, the same count EnCodec produces at 24 kHz.

Padding invariance: a clip's features do not depend on how much padding follows it in a batch.
The STFT pads with zeros (not reflect, which also fails on clips shorter than ``n_fft / 2``),
samples past ``lengths`` are zeroed, frames past each clip's valid length are zeroed before every
subsampling conv and before the depthwise conv, attention masks padded keys, and every norm is a
per-frame LayerNorm (no BatchNorm: it mixes clips and padding).
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, ValidationInfo, field_validator, model_validator
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from mertlab.contracts import Backbone, BackboneOutput, Params
from mertlab.errors import MertlabError
from mertlab.hookspecs import hookimpl
from mertlab.toolkit.attention import attention
from mertlab.toolkit.dropout import Dropout
from mertlab.toolkit.log_mel import LogMelFrontend, ceil_div
from mertlab.toolkit.presets import fill_preset

PresetName = Literal["tiny", "small", "base", "large"]

#: Size fields each preset fills (fields the user sets explicitly win).
#: ``base``/``large`` keep MERT-95M/330M depth, width and heads (Li et al. 2023, "MERT", arXiv 2306.00107: 12 x 768,
#: 12 heads; 24 x 1024, 16 heads) so layer-wise probing compares like with like. Each macaron
#: feed-forward is 1.5 x hidden wide: two of them (6 D^2) + attention (4 D^2) + conv module (3 D^2)
#: is ~13 D^2 per layer against MERT's 12 D^2, so base ~96M and large ~338M parameters sit next to
#: MERT-95M / MERT-330M. MusicFM itself (minzwon/musicfm) is 12 layers x 1024 with 4096-wide FFNs
#: and 512 subsampling channels at 25 Hz (~330M): ``preset: large, num_layers: 12, ffn_dim: 4096,
#: subsampling_channels: 512, hop_length: 240``.
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(
        num_layers=2,
        hidden_dim=64,
        num_heads=4,
        ffn_dim=128,
        conv_kernel=7,
        subsampling_channels=8,
        n_mels=32,
        n_fft=512,
    ),
    "small": dict(num_layers=8, hidden_dim=512, num_heads=8, ffn_dim=768, conv_kernel=31, subsampling_channels=64),
    "base": dict(num_layers=12, hidden_dim=768, num_heads=12, ffn_dim=1152, conv_kernel=31, subsampling_channels=128),
    "large": dict(num_layers=24, hidden_dim=1024, num_heads=16, ffn_dim=1536, conv_kernel=31, subsampling_channels=256),
}


class ConformerParams(Params):
    """Parameters of the ``conformer`` backbone. Unset size fields come from ``preset``;
    with no preset the defaults are the ``base`` sizes."""

    preset: PresetName | None = Field(
        None,
        description="Named size (tiny < 1M params for tests, small ~29M, base ~96M, large ~338M); "
        "fills the size fields you do not set.",
    )
    # frontend
    sample_rate: int = Field(24000, gt=0, description="Input sample rate in Hz (MERT/MusicFM: 24 kHz).")
    n_fft: int = Field(2048, gt=1, description="STFT size in samples (MusicFM: 2048).")
    hop_length: int = Field(
        80,
        gt=0,
        validate_default=True,
        description="STFT hop in samples. 80 with 4x subsampling = 75 Hz at 24 kHz (MERT rate); 240 = MusicFM's 25 Hz.",
    )
    n_mels: int = Field(128, gt=0, description="Mel bins (MusicFM/BEST-RQ: 128).")
    f_min: float = Field(0.0, ge=0, description="Lowest mel filter frequency in Hz.")
    f_max: float | None = Field(
        None, gt=0, validate_default=True, description="Highest mel filter frequency in Hz; null = sample_rate / 2."
    )
    mel_db_mean: float = Field(
        -5.0,
        description="Initial normalisation offset of the log-mel (dB); pink noise at -20 dBFS "
        "RMS gives about -5 dB with n_fft 2048. Dataset statistics are better (MusicFM uses them).",
    )
    mel_db_std: float = Field(20.0, gt=0, description="Initial normalisation scale of the log-mel (dB).")
    learnable_mel_norm: bool = Field(
        True,
        description="Learn the per-mel-bin normalisation (scale, shift); the subsampling convs "
        "share weights across frequency, so this lets the model equalise bins.",
    )
    # subsampling
    subsampling_strides: tuple[Annotated[int, Field(ge=1)], ...] = Field(
        (2, 2), min_length=1, description="Time stride of each 2D conv subsampling layer (MusicFM: 2, 2)."
    )
    subsampling_freq_stride: int = Field(
        2, ge=1, description="Frequency stride of each subsampling layer (MusicFM: 2)."
    )
    subsampling_kernel: int = Field(
        4,
        ge=1,
        validate_default=True,
        description="Kernel size (time and frequency) of the subsampling convs; 4 with stride 2 "
        "keeps output frames centred on their samples.",
    )
    subsampling_channels: int = Field(128, gt=0, description="Channels of the subsampling convs (MusicFM: 512).")
    # encoder
    hidden_dim: int = Field(768, gt=0, description="Model width.")
    num_layers: int = Field(12, ge=1, description="Conformer blocks.")
    num_heads: int = Field(12, ge=1, validate_default=True, description="Attention heads; must divide hidden_dim.")
    ffn_dim: int = Field(1152, gt=0, description="Inner width of each of the two macaron feed-forwards.")
    conv_kernel: int = Field(31, ge=1, description="Depthwise conv kernel (odd; conformer / wav2vec2-conformer: 31).")
    pos_encoding: Literal["rotary", "none"] = Field(
        "rotary", validate_default=True, description="Positions in self-attention (MusicFM: rotary)."
    )
    rotary_base: float = Field(10000.0, gt=1, description="Rotary embedding base (RoFormer: 10000).")
    dropout: float = Field(
        0.1, ge=0, lt=1, description="Dropout on the projection, feed-forwards and residual branches."
    )
    attention_dropout: float = Field(0.1, ge=0, lt=1, description="Dropout on attention weights.")
    gradient_checkpointing: bool = Field(False, description="Recompute each block in the backward pass (saves memory).")

    @model_validator(mode="before")
    @classmethod
    def _fill_preset(cls, data: Any) -> Any:
        return fill_preset(data, PRESETS)

    # Cross-field checks are field validators (fields validate in declaration order, so the
    # earlier field is in info.data) so errors name the field: "params.num_heads: ...".
    @field_validator("num_heads")
    @classmethod
    def _heads_divide_dim(cls, v: int, info: ValidationInfo) -> int:
        dim = info.data.get("hidden_dim")
        if dim is not None and dim % v:
            raise ValueError(f"num_heads ({v}) must divide hidden_dim ({dim})")
        return v

    @field_validator("pos_encoding")
    @classmethod
    def _rotary_even_head_dim(cls, v: str, info: ValidationInfo) -> str:
        dim, heads = info.data.get("hidden_dim"), info.data.get("num_heads")
        if v == "rotary" and dim is not None and heads is not None and (dim // heads) % 2:
            raise ValueError(f"rotary positions need an even head dim; hidden_dim / num_heads = {dim // heads}")
        return v

    @field_validator("conv_kernel")
    @classmethod
    def _odd_kernel(cls, v: int) -> int:
        if v % 2 == 0:
            raise ValueError(f"conv_kernel must be odd so the depthwise conv is centred; got {v}")
        return v

    @field_validator("hop_length")
    @classmethod
    def _hop_within_fft(cls, v: int, info: ValidationInfo) -> int:
        n_fft = info.data.get("n_fft")
        if n_fft is not None and n_fft < v:
            raise ValueError(f"hop_length ({v}) must be <= n_fft ({n_fft}) or samples are skipped")
        return v

    @field_validator("f_max")
    @classmethod
    def _f_max_range(cls, v: float | None, info: ValidationInfo) -> float | None:
        sample_rate, f_min = info.data.get("sample_rate"), info.data.get("f_min")
        if sample_rate is None:
            return v
        f_max = sample_rate / 2 if v is None else v
        if f_max > sample_rate / 2:
            raise ValueError(f"f_max ({f_max}) exceeds the Nyquist frequency ({sample_rate / 2})")
        if f_min is not None and f_min >= f_max:
            raise ValueError(f"f_min ({f_min}) must be below f_max ({f_max})")
        return v

    @field_validator("subsampling_kernel")
    @classmethod
    def _kernel_covers_strides(cls, v: int, info: ValidationInfo) -> int:
        strides = (*info.data.get("subsampling_strides", ()), info.data.get("subsampling_freq_stride", 1))
        if v < max(strides):
            raise ValueError(
                f"subsampling_kernel ({v}) must be >= every subsampling stride {list(strides)}, or frames are skipped"
            )
        return v


# --------------------------------------------------------------------------- helpers
def _same_padding(kernel: int, stride: int) -> tuple[int, int]:
    """Padding so a conv maps ``L`` frames to ``ceil(L / stride)``, centred where possible.

    With total padding ``kernel - 1`` the output length is ``floor((L - 1) / stride) + 1``.
    """
    left = (kernel - stride) // 2
    return left, kernel - 1 - left


def _steps_mask(lengths: Tensor, size: int) -> Tensor:
    """``[B, size]`` True at padded steps (index >= length)."""
    return torch.arange(size, device=lengths.device)[None, :] >= lengths[:, None]


class ConvSubsampling(nn.Module):
    """2D conv stack over (time, frequency) with strides; zeroes padded frames before each conv
    so a clip's output does not depend on the padding after it."""

    def __init__(self, p: ConformerParams) -> None:
        super().__init__()
        k, fs = p.subsampling_kernel, p.subsampling_freq_stride
        self.strides = tuple(p.subsampling_strides)
        self.time_pads = [_same_padding(k, s) for s in self.strides]
        self.freq_pad = _same_padding(k, fs)
        chans = [1] + [p.subsampling_channels] * len(self.strides)
        self.convs = nn.ModuleList(
            nn.Conv2d(chans[i], chans[i + 1], kernel_size=k, stride=(s, fs)) for i, s in enumerate(self.strides)
        )
        freq = p.n_mels
        for _ in self.strides:
            freq = ceil_div(freq, fs)
        self.out_dim = p.subsampling_channels * freq

    def forward(self, x: Tensor, frame_lengths: Tensor) -> tuple[Tensor, Tensor]:
        """``x`` ``[B, T, F]`` with ``frame_lengths`` ``[B]`` -> ``([B, T', C * F'], lengths')``."""
        x = x.unsqueeze(1)  # [B, 1, T, F]
        lengths = frame_lengths
        for conv, stride, (left, right) in zip(self.convs, self.strides, self.time_pads, strict=True):
            x = x.masked_fill(_steps_mask(lengths, x.shape[2])[:, None, :, None], 0.0)
            x = F.gelu(conv(F.pad(x, (*self.freq_pad, left, right))))
            lengths = ceil_div(lengths, stride)
        b, c, t, f = x.shape
        return x.permute(0, 2, 1, 3).reshape(b, t, c * f), lengths


def _rotary_tables(length: int, head_dim: int, base: float, device: torch.device) -> tuple[Tensor, Tensor]:
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim))
    angles = torch.arange(length, device=device, dtype=torch.float32)[:, None] * inv_freq[None, :]
    angles = torch.cat([angles, angles], dim=-1)  # [T, head_dim], rotate-half layout
    return angles.cos(), angles.sin()


def _apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return (x * cos + rotated * sin).to(x.dtype)


class FeedForward(nn.Module):
    def __init__(self, dim: int, inner: int, dropout: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, inner)
        self.fc2 = nn.Linear(inner, dim)
        self.dropout = Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.fc2(self.dropout(F.silu(self.fc1(self.norm(x))))))


class SelfAttention(nn.Module):
    """Pre-norm MHSA with optional rotary positions, via :func:`mertlab.toolkit.attention.attention`."""

    def __init__(self, p: ConformerParams) -> None:
        super().__init__()
        self.heads = p.num_heads
        self.head_dim = p.hidden_dim // p.num_heads
        self.norm = nn.LayerNorm(p.hidden_dim)
        self.qkv = nn.Linear(p.hidden_dim, 3 * p.hidden_dim)
        self.out = nn.Linear(p.hidden_dim, p.hidden_dim)
        self.attention_dropout = p.attention_dropout
        self.dropout = Dropout(p.dropout)

    def forward(
        self, x: Tensor, attend: Tensor, rotary: tuple[Tensor, Tensor] | None, instrument: bool
    ) -> tuple[Tensor, Tensor | None]:
        """``attend`` ``[B, 1, 1, T]`` True at valid keys. Returns the branch output and, when
        ``instrument``, the max pre-softmax logit over valid (query, key) pairs (detached)."""
        b, t, d = x.shape
        q, k, v = self.qkv(self.norm(x)).view(b, t, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        if rotary is not None:
            cos, sin = rotary
            q, k = _apply_rotary(q, cos, sin), _apply_rotary(k, cos, sin)
        max_logit = None
        if instrument:
            with torch.no_grad():
                logits = (q @ k.transpose(-1, -2)).float() * self.head_dim**-0.5
                valid = attend & attend.transpose(-1, -2)  # [B, 1, T, T] valid query and key
                max_logit = logits.masked_fill(~valid, float("-inf")).amax()
        y = attention(q, k, v, attend, self.attention_dropout if self.training else 0.0)
        return self.dropout(self.out(y.transpose(1, 2).reshape(b, t, d))), max_logit


class ConvModule(nn.Module):
    """Conformer conv module: LayerNorm, pointwise conv + GLU, depthwise conv, LayerNorm (not
    BatchNorm, which would mix clips and padding), SiLU, pointwise conv. Padded frames are zeroed
    before the depthwise conv, matching the zero padding a lone clip sees."""

    def __init__(self, p: ConformerParams) -> None:
        super().__init__()
        d = p.hidden_dim
        self.norm = nn.LayerNorm(d)
        self.pointwise_in = nn.Linear(d, 2 * d)
        self.depthwise = nn.Conv1d(d, d, p.conv_kernel, padding=p.conv_kernel // 2, groups=d)
        self.depthwise_norm = nn.LayerNorm(d)
        self.pointwise_out = nn.Linear(d, d)
        self.dropout = Dropout(p.dropout)

    def forward(self, x: Tensor, pad: Tensor) -> Tensor:
        y = F.glu(self.pointwise_in(self.norm(x)), dim=-1).masked_fill(pad[..., None], 0.0)
        y = self.depthwise(y.transpose(1, 2)).transpose(1, 2)
        return self.dropout(self.pointwise_out(F.silu(self.depthwise_norm(y))))


class ConformerBlock(nn.Module):
    """Macaron conformer block: ½ FFN, MHSA, conv module, ½ FFN, final LayerNorm."""

    def __init__(self, p: ConformerParams) -> None:
        super().__init__()
        self.ffn1 = FeedForward(p.hidden_dim, p.ffn_dim, p.dropout)
        self.attention = SelfAttention(p)
        self.conv = ConvModule(p)
        self.ffn2 = FeedForward(p.hidden_dim, p.ffn_dim, p.dropout)
        self.final_norm = nn.LayerNorm(p.hidden_dim)

    def forward(
        self, x: Tensor, pad: Tensor, rotary: tuple[Tensor, Tensor] | None, instrument: bool
    ) -> tuple[Tensor, tuple[Tensor, Tensor] | None]:
        """Returns the block output and, when ``instrument``, (max attention logit, RMS of the
        residual stream over valid frames before the final LayerNorm), both detached. The
        pre-norm RMS is the one that shows residual growth: the output's RMS is ~ the norm gain."""
        x = x + 0.5 * self.ffn1(x)
        attn, max_logit = self.attention(x, ~pad[:, None, None, :], rotary, instrument)
        x = x + attn
        x = x + self.conv(x, pad)
        x = x + 0.5 * self.ffn2(x)
        stats = None
        if instrument:
            with torch.no_grad():
                valid = x.detach().float()[~pad]
                stats = (max_logit, valid.pow(2).mean().sqrt())
        return self.final_norm(x).masked_fill(pad[..., None], 0.0), stats


# --------------------------------------------------------------------------- backbone
class ConformerBackbone(Backbone):
    """MusicFM-style conformer: log-mel frontend (nnAudio), 2D conv subsampling, macaron
    conformer blocks with rotary self-attention and depthwise conv modules.

    Same contract as every backbone: ``forward(wav, lengths, frame_mask, instrument)`` returns
    all hidden states (index 0 = encoder input, after the mask embedding), the frame padding
    mask and the frame rate. Padded frames of every hidden state are zero.

    ``instrument=True`` adds, per block, the max pre-softmax attention logit over valid
    (query, key) pairs and the RMS of the residual stream before the block's final LayerNorm
    (the block output is LayerNorm'd, so its own RMS would only show the norm gain). Both are
    detached; with ``instrument=False`` neither is computed.
    """

    name = "conformer"
    summary = "MusicFM-style conformer (log-mel + conv subsampling + rotary conformer), 75 Hz by default"
    Params = ConformerParams
    test_params = {"preset": "tiny"}

    def __init__(self, params: ConformerParams) -> None:
        super().__init__(params)
        p = params
        self.frontend = LogMelFrontend(
            p.sample_rate,
            p.n_fft,
            p.hop_length,
            p.n_mels,
            p.f_min,
            p.f_max,
            p.mel_db_mean,
            p.mel_db_std,
            p.learnable_mel_norm,
        )
        self.subsampling = ConvSubsampling(p)
        self.projection = nn.Sequential(
            nn.Linear(self.subsampling.out_dim, p.hidden_dim), nn.LayerNorm(p.hidden_dim), Dropout(p.dropout)
        )
        # HuBERT initialises its mask embedding uniformly in [0, 1); the transformer does the same.
        self.mask_embedding = nn.Parameter(torch.empty(p.hidden_dim).uniform_())
        self.layers = nn.ModuleList(ConformerBlock(p) for _ in range(p.num_layers))

    # ---------------------------------------------------------------- contract properties
    @property
    def frame_rate(self) -> float:
        return self.params.sample_rate / (self.params.hop_length * math.prod(self.params.subsampling_strides))

    def _frames(self, samples: int | Tensor) -> int | Tensor:
        # ceil(S / hop) mel frames, then ceil(L / s) per subsampling layer (see _same_padding)
        frames = ceil_div(samples, self.params.hop_length)
        for stride in self.params.subsampling_strides:
            frames = ceil_div(frames, stride)
        return frames

    def num_frames(self, num_samples: int) -> int:
        return int(self._frames(max(int(num_samples), 0)))

    def frame_lengths(self, lengths: Tensor) -> Tensor:
        return torch.as_tensor(self._frames(lengths.long()))

    def block_names(self) -> dict[str, list[str]]:
        groups: dict[str, list[str]] = {}
        if self.params.learnable_mel_norm:
            groups["frontend"] = ["frontend."]
        groups["subsampling"] = ["subsampling.", "projection."]
        groups.update({f"layer{i}": [f"layers.{i}."] for i in range(len(self.layers))})
        groups["mask_embedding"] = ["mask_embedding"]
        return groups

    def layer_classes(self) -> set[type[nn.Module]]:
        return {ConformerBlock}

    # ---------------------------------------------------------------- forward
    def forward(
        self,
        wav: Tensor,
        lengths: Tensor | None = None,
        frame_mask: Tensor | None = None,
        instrument: bool = False,
    ) -> BackboneOutput:
        lengths = self.checked_input(wav, lengths)
        batch, num_samples = wav.shape
        if lengths is None:
            lengths = torch.full((batch,), num_samples, device=wav.device, dtype=torch.long)
        # Zero the padding explicitly: the frontend's padding invariance relies on it.
        wav = wav.masked_fill(_steps_mask(lengths, num_samples), 0.0)

        mel = self.frontend(wav)
        features, frame_lengths = self.subsampling(mel, ceil_div(lengths, self.params.hop_length))
        pad = _steps_mask(frame_lengths, features.shape[1])
        x = self.projection(features)
        if frame_mask is not None:
            if frame_mask.shape != pad.shape:
                raise MertlabError(
                    f"conformer: frame_mask must have shape {tuple(pad.shape)} (num_frames({num_samples}) = "
                    f"{pad.shape[1]}); got {tuple(frame_mask.shape)}"
                )
            x = torch.where(frame_mask.to(x.device, torch.bool)[..., None], self.mask_embedding.to(x.dtype), x)
        x = x.masked_fill(pad[..., None], 0.0)

        rotary = None
        if self.params.pos_encoding == "rotary":
            rotary = _rotary_tables(
                x.shape[1], self.hidden_dim // self.params.num_heads, self.params.rotary_base, x.device
            )

        hidden_states = [x]
        max_logits: list[Tensor] = []
        act_rms: list[Tensor] = []
        use_checkpoint = self.params.gradient_checkpointing and self.training and torch.is_grad_enabled()
        for layer in self.layers:
            if use_checkpoint:
                x, stats = checkpoint(layer, x, pad, rotary, instrument, use_reentrant=False)
            else:
                x, stats = layer(x, pad, rotary, instrument)
            hidden_states.append(x)
            if stats is not None:
                max_logits.append(stats[0])
                act_rms.append(stats[1])

        return BackboneOutput(
            hidden_states=tuple(hidden_states),
            padding_mask=pad,
            frame_rate=self.frame_rate,
            attn_max_logits=max_logits if instrument else None,
            act_rms=act_rms if instrument else None,
            extractor_features=features,
        )


@hookimpl
def register_backbones(register) -> None:
    register(ConformerBackbone)
