"""Parameters of the ``transformer`` backbone and its named size presets.

Defaults are MERT-95M (= the ``base`` preset): HuBERT-base architecture at 24 kHz, sizes from the
MERT paper / released ``m-a-p/MERT-v1-95M`` config; dropouts and layer drop from the fairseq
HuBERT-base pre-training recipe MERT builds on (dropout 0.1, attention 0.1, activation 0.0,
input/projection 0.1, encoder layer drop 0.05).
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import Field, PositiveInt, model_validator

from mertlab.contracts import Params
from mertlab.toolkit.presets import fill_preset

Activation = Literal["gelu", "gelu_tanh", "relu", "silu"]
Preset = Literal["tiny", "small", "base", "large"]

#: Size (and, for ``large``, stability) fields each preset fills when the user did not set them.
PRESETS: dict[str, dict[str, Any]] = {
    # For tests and smoke runs: < 1M parameters, still the MERT hop (320 samples = 75 Hz at 24 kHz).
    "tiny": {
        "conv_channels": (32,) * 7,
        "hidden_dim": 64,
        "num_layers": 2,
        "num_heads": 4,
        "ffn_dim": 128,
        "pos_conv_kernel": 16,
        "pos_conv_groups": 4,
        "layer_norm_first": False,
        "attention_relax": None,
        "extractor_mode": "group_norm",
    },
    # mertlab's own mid size for ablations on one GPU (about 32M parameters).
    "small": {
        "conv_channels": (512,) * 7,
        "hidden_dim": 512,
        "num_layers": 8,
        "num_heads": 8,
        "ffn_dim": 2048,
        "pos_conv_kernel": 128,
        "pos_conv_groups": 16,
        "layer_norm_first": False,
        "attention_relax": None,
        "extractor_mode": "group_norm",
    },
    # MERT-95M: 12 layers, 768, 3072 FFN, 12 heads, post-LN, group-norm extractor.
    "base": {
        "conv_channels": (512,) * 7,
        "hidden_dim": 768,
        "num_layers": 12,
        "num_heads": 12,
        "ffn_dim": 3072,
        "pos_conv_kernel": 128,
        "pos_conv_groups": 16,
        "layer_norm_first": False,
        "attention_relax": None,
        "extractor_mode": "group_norm",
    },
    # MERT-330M: 24 layers, 1024, 4096 FFN, 16 heads, pre-LN, attention relaxation 32,
    # layer-norm extractor (HF do_stable_layer_norm=True, feat_extract_norm="layer").
    "large": {
        "conv_channels": (512,) * 7,
        "hidden_dim": 1024,
        "num_layers": 24,
        "num_heads": 16,
        "ffn_dim": 4096,
        "pos_conv_kernel": 128,
        "pos_conv_groups": 16,
        "layer_norm_first": True,
        "attention_relax": 32.0,
        "extractor_mode": "layer_norm",
    },
}


class TransformerParams(Params):
    """HuBERT/MERT backbone parameters. ``preset`` fills every preset field you leave unset."""

    preset: Preset | None = Field(
        None,
        description="Named size: tiny (<1M, tests), small, base (= MERT-95M), large (= MERT-330M). "
        "Fills the size/stability fields not set explicitly; null keeps the field defaults (= base).",
    )
    sample_rate: PositiveInt = Field(24000, description="Input sample rate in Hz (MERT: 24 kHz).")

    # ---- frontend
    frontend: Literal["conv", "mel"] = Field(
        "conv",
        description="conv: HuBERT/MERT waveform CNN (the conv_* fields; Hugging Face HubertModel layout); mel: a "
        "log-mel spectrogram (the mel_* fields, hop = the product of conv_strides, so the frame rate is the same) "
        "projected to hidden_dim, as spectrogram models such as MusicFM and MuQ use (not exportable to HF).",
    )
    mel_bins: PositiveInt = Field(128, description="frontend mel: number of mel bins (MusicFM/BEST-RQ: 128).")
    mel_n_fft: PositiveInt = Field(2048, description="frontend mel: STFT size in samples (MusicFM: 2048 at 24 kHz).")

    # ---- convolutional feature extractor
    conv_channels: tuple[PositiveInt, ...] = Field(
        (512,) * 7, min_length=1, description="Output channels of each extractor conv layer (MERT: 7 x 512)."
    )
    conv_kernels: tuple[PositiveInt, ...] = Field(
        (10, 3, 3, 3, 3, 2, 2),
        min_length=1,
        description="Kernel size of each extractor conv layer (MERT: 10,3,3,3,3,2,2).",
    )
    conv_strides: tuple[PositiveInt, ...] = Field(
        (5, 2, 2, 2, 2, 2, 2),
        min_length=1,
        description="Stride of each extractor conv layer; their product is the hop (MERT: 320).",
    )
    conv_bias: bool = Field(False, description="Bias in the extractor convs (MERT/HuBERT-base: false).")
    extractor_mode: Literal["group_norm", "layer_norm"] = Field(
        "group_norm",
        description="group_norm: GroupNorm on the first conv only (HF 'group', MERT-95M; normalises over time, "
        "so padding changes the output); layer_norm: LayerNorm after every conv (HF 'layer', MERT-330M; "
        "padding-invariant).",
    )
    extractor_activation: Activation = Field(
        "gelu", description="Activation of the extractor convs and the positional conv."
    )
    feature_grad_mult: float = Field(
        1.0,
        ge=0.0,
        description="Scales the gradient reaching the frontend (forward unchanged): fairseq wav2vec 2.0/HuBERT base "
        "pre-training use 0.1 (feature_grad_mult in wav2vec2_base_librispeech.yaml / hubert_base_librispeech.yaml) so "
        "the conv extractor learns slowly; 0 freezes it; 1 = plain gradients.",
    )
    projection_layer_norm: bool = Field(
        True, description="LayerNorm on extractor features before the projection (HF feat_proj_layer_norm)."
    )
    projection_dropout: float = Field(
        0.1, ge=0.0, lt=1.0, description="Dropout after the feature projection (fairseq dropout_input: 0.1)."
    )

    # ---- transformer encoder
    hidden_dim: PositiveInt = Field(768, description="Model width (MERT-95M: 768, 330M: 1024).")
    num_layers: PositiveInt = Field(12, description="Encoder layers (MERT-95M: 12, 330M: 24).")
    num_heads: PositiveInt = Field(12, description="Attention heads; must divide hidden_dim (MERT-95M: 12, 330M: 16).")
    ffn_dim: PositiveInt = Field(3072, description="Feed-forward inner size (MERT-95M: 3072, 330M: 4096).")
    activation: Activation = Field("gelu", description="Feed-forward activation.")
    layer_norm_first: bool = Field(
        False, description="Pre-LN layers (MERT-330M, HF do_stable_layer_norm) instead of post-LN (MERT-95M)."
    )
    layer_norm_eps: float = Field(1e-5, gt=0.0, description="Epsilon of the projection and encoder LayerNorms.")
    pos_conv_kernel: PositiveInt = Field(
        128, description="Kernel of the convolutional positional embedding (MERT: 128)."
    )
    pos_conv_groups: PositiveInt = Field(
        16, description="Groups of the positional conv; must divide hidden_dim (MERT: 16)."
    )
    attention_relax: float | None = Field(
        None,
        gt=0.0,
        description="Attention relaxation factor alpha (CogView PB-relax, MERT-330M: 32): queries are scaled by "
        "1/(sqrt(d)*alpha) before QK^T, the row max is subtracted and the result multiplied by alpha, so "
        "large logits cannot overflow in fp16/bf16. null: plain scaled_dot_product_attention.",
    )
    deepnorm: bool = Field(
        False,
        description="DeepNorm (Wang et al. 2022): residual scaled by (2N)^(1/4) and value/output/FFN weights "
        "initialised with gain (8N)^(-1/4). Post-LN only.",
    )

    # ---- regularisation / memory
    dropout: float = Field(
        0.1, ge=0.0, lt=1.0, description="Dropout on attention/FFN outputs and encoder input (HF hidden_dropout)."
    )
    attention_dropout: float = Field(0.1, ge=0.0, lt=1.0, description="Dropout on attention probabilities.")
    activation_dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout after the FFN activation.")
    layer_drop: float = Field(
        0.05,
        ge=0.0,
        lt=1.0,
        description="Probability of skipping each encoder layer in training (fairseq HuBERT: 0.05).",
    )
    gradient_checkpointing: bool = Field(
        False, description="Recompute each encoder layer in backward to save activation memory."
    )

    @model_validator(mode="before")
    @classmethod
    def _fill_from_preset(cls, data: Any) -> Any:
        """Fill preset fields the user left unset (explicit values always win)."""
        return fill_preset(data, PRESETS)

    @model_validator(mode="after")
    def _check_shapes(self) -> TransformerParams:
        n = (len(self.conv_channels), len(self.conv_kernels), len(self.conv_strides))
        if len(set(n)) != 1:
            raise ValueError(
                f"conv_channels, conv_kernels and conv_strides must have one entry per conv layer; "
                f"got lengths {n[0]}, {n[1]}, {n[2]}"
            )
        if self.hidden_dim % self.num_heads:
            raise ValueError(f"num_heads ({self.num_heads}) must divide hidden_dim ({self.hidden_dim})")
        if self.hidden_dim % self.pos_conv_groups:
            raise ValueError(f"pos_conv_groups ({self.pos_conv_groups}) must divide hidden_dim ({self.hidden_dim})")
        if self.deepnorm and self.layer_norm_first:
            raise ValueError("deepnorm scales post-LN residuals; it cannot be combined with layer_norm_first=true")
        return self

    # ---- derived quantities (one place for the frame arithmetic)
    @property
    def hop(self) -> int:
        """Samples between frames: product of the conv strides (MERT: 320)."""
        return math.prod(self.conv_strides)

    @property
    def extractor_dim(self) -> int:
        """Width of the frontend's per-frame features (the feature projection's input)."""
        return self.mel_bins if self.frontend == "mel" else self.conv_channels[-1]

    @property
    def receptive_field(self) -> int:
        """Samples seen by one frame of the conv frontend (MERT: 400); also the shortest clip
        giving one frame. (The mel frontend gives ``ceil(S / hop)`` frames for any ``S >= 1``.)"""
        field, jump = 1, 1
        for kernel, stride in zip(self.conv_kernels, self.conv_strides, strict=True):
            field += (kernel - 1) * jump
            jump *= stride
        return field

    @property
    def head_dim(self) -> int:
        return self.hidden_dim // self.num_heads
