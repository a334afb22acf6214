"""The ``transformer`` backbone: HuBERT/MERT architecture, Hugging Face weight layout."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, cast

import torch
from torch import Tensor, nn

from mertlab.contracts import Backbone, BackboneOutput
from mertlab.errors import MertlabError

from .hf import load_hf_weights, read_hf_params, save_hf
from .layers import Encoder, EncoderLayer, FeatureExtractor, FeatureProjection, MelFeatureExtractor
from .params import TransformerParams


def scale_gradient(x: Tensor, factor: float) -> Tensor:
    """Identity forward; the backward pass multiplies the gradient by ``factor`` (fairseq's
    ``GradMultiply``; 0 detaches)."""
    if factor == 1.0 or not x.requires_grad:
        return x
    if factor == 0.0:
        return x.detach()
    return x * factor + x.detach() * (1.0 - factor)


class TransformerBackbone(Backbone):
    """HuBERT/MERT backbone: conv feature extractor -> feature projection -> (mask embedding)
    -> convolutional positional embedding -> transformer encoder.

    Defaults are MERT-95M; ``preset`` picks tiny/small/base/large (large = MERT-330M: pre-LN,
    attention relaxation, layer-norm extractor). The ``state_dict`` has exactly the keys of
    ``transformers.HubertModel``; :meth:`load_hf` loads a local HF/MERT checkpoint directory.

    Output: ``hidden_states[0]`` is the encoder input after the positional conv (and, post-LN,
    the encoder LayerNorm), ``hidden_states[i]`` the output of layer ``i`` -- identical to HF's
    ``output_hidden_states`` -- except that for pre-LN models the last entry includes the final
    LayerNorm (HF's ``last_hidden_state``, as MERT's own HF code and transformers 4.x return it).

    Padding: padded frames are zeroed before the positional conv and excluded as attention keys.
    With ``extractor_mode="layer_norm"`` every real frame is independent of the padding: a clip
    gives the same features alone or padded inside a batch. With ``"group_norm"`` (MERT-95M, HF
    "group") the first conv layer's GroupNorm normalises each channel over the *whole* padded
    time axis, so padding changes every frame of a clip -- the variable-length problem MERT users
    report. Use layer_norm (or equal-length crops) when that matters.

    Instrumentation (``instrument=True``): per-layer max pre-softmax attention logit (over real
    query/key pairs) and per-layer output RMS (over real frames), detached fp32 scalars; NaN
    logit for a layer skipped by layer drop. Nothing is computed when off.
    """

    name: ClassVar[str] = "transformer"
    summary: ClassVar[str] = (
        "HuBERT/MERT transformer (conv extractor, pos-conv, post/pre-LN), HF HubertModel weight layout"
    )
    Params = TransformerParams
    test_params = {"preset": "tiny"}
    params: TransformerParams

    def __init__(self, params: TransformerParams) -> None:
        super().__init__(params)
        # Attribute names = HF HubertModel's, so state_dict keys match (see hf.py).
        self.feature_extractor = MelFeatureExtractor(params) if params.frontend == "mel" else FeatureExtractor(params)
        self.feature_projection = FeatureProjection(params)
        self.masked_spec_embed = nn.Parameter(torch.empty(params.hidden_dim).uniform_())
        self.encoder = Encoder(params)
        self._init_linear_weights()

    def _init_linear_weights(self) -> None:
        # BERT init as fairseq HuBERT (init_bert_params): N(0, 0.02), zero bias.
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
                nn.init.zeros_(module.bias)
        if self.params.deepnorm:
            # DeepNet encoder-only init (torchscale): value/output/FFN weights / (8N)^(1/4).
            scale = (8.0 * self.params.num_layers) ** 0.25
            for layer in cast(list[EncoderLayer], self.encoder.layers):
                for linear in (
                    layer.attention.v_proj,
                    layer.attention.out_proj,
                    layer.feed_forward.intermediate_dense,
                    layer.feed_forward.output_dense,
                ):
                    linear.weight.data.div_(scale)

    # ------------------------------------------------------------------ contract properties
    @property
    def frame_rate(self) -> float:
        return self.params.sample_rate / self.params.hop

    @property
    def min_samples(self) -> int:
        """The shortest clip that gives one frame: the conv receptive field, 1 sample for mel."""
        return 1 if self.params.frontend == "mel" else self.params.receptive_field

    def num_frames(self, num_samples: int) -> int:
        """conv: ``floor((S - receptive_field) / hop) + 1`` (0 below the receptive field): the
        nested conv output lengths collapse to this closed form (MERT: ``(S - 400) // 320 + 1``).
        mel: ``ceil(S / hop)`` (frame ``t`` centred on samples ``[t*hop, (t+1)*hop)``)."""
        if self.params.frontend == "mel":
            return -(-max(num_samples, 0) // self.params.hop)
        return max(0, (num_samples - self.params.receptive_field) // self.params.hop + 1)

    def frame_lengths(self, lengths: Tensor) -> Tensor:
        if self.params.frontend == "mel":
            return -torch.div(-lengths, self.params.hop, rounding_mode="floor")
        frames = torch.div(lengths - self.params.receptive_field, self.params.hop, rounding_mode="floor") + 1
        return frames.clamp(min=0)

    def block_names(self) -> dict[str, list[str]]:
        """Gradient-norm groups: extractor, projection, mask embedding, pos conv, encoder norm,
        one group per encoder layer (``layer0`` ...)."""
        blocks = {
            "feature_extractor": ["feature_extractor."],
            "feature_projection": ["feature_projection."],
            "mask_embedding": ["masked_spec_embed"],
            "pos_conv": ["encoder.pos_conv_embed."],
            "encoder_norm": ["encoder.layer_norm."],
        }
        blocks.update({f"layer{i}": [f"encoder.layers.{i}."] for i in range(self.params.num_layers)})
        return blocks

    def set_step_seed(self, seed: int) -> None:
        self.encoder.layer_drop_generator = torch.Generator().manual_seed(seed)

    def layer_classes(self) -> set[type[nn.Module]]:
        return {EncoderLayer}

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        wav: Tensor,
        lengths: Tensor | None = None,
        frame_mask: Tensor | None = None,
        instrument: bool = False,
    ) -> BackboneOutput:
        lengths = self.checked_input(wav, lengths, min_samples=self.min_samples)  # >= one receptive field each
        batch, num_samples = wav.shape
        if lengths is not None:
            if self.params.frontend == "mel":  # a clip's last STFT windows reach past its end: zeros, as alone
                samples = torch.arange(num_samples, device=wav.device)
                wav = wav.masked_fill(samples[None, :] >= lengths.to(wav.device)[:, None], 0.0)
        features = scale_gradient(self.feature_extractor(wav), self.params.feature_grad_mult)  # [B, T, C]
        num_frames = features.shape[1]

        pad = None
        steps = torch.arange(num_frames, device=wav.device)
        if lengths is not None:
            pad = steps[None, :] >= self.frame_lengths(lengths.to(wav.device))[:, None]
        padding_mask = pad if pad is not None else torch.zeros(batch, num_frames, dtype=torch.bool, device=wav.device)
        if pad is not None and not bool(pad.any()):
            pad = None  # nothing padded: unmasked SDPA fast path

        x = self.feature_projection(features)
        if frame_mask is not None:
            if frame_mask.shape != (batch, num_frames) or frame_mask.dtype != torch.bool:
                raise MertlabError(
                    f"frame_mask must be bool [{batch}, {num_frames}], got {frame_mask.dtype} {tuple(frame_mask.shape)}"
                )
            x = torch.where(frame_mask[..., None], self.masked_spec_embed.to(x.dtype), x)
        enc = self.encoder(x, pad, instrument)
        return BackboneOutput(
            hidden_states=enc.hidden_states,
            padding_mask=padding_mask,
            frame_rate=self.frame_rate,
            attn_max_logits=enc.attn_max_logits,
            act_rms=enc.act_rms,
            extractor_features=features,
        )

    # ------------------------------------------------------------------ Hugging Face
    #: HubertModel / HubertFor* (transformers) and MERT's own MERTModel (``mert_model``).
    hf_model_types: ClassVar[tuple[str, ...]] = ("hubert", "mert_model")

    def save_hf(self, directory: Path) -> None:
        """Write a ``transformers.HubertModel`` directory; see :func:`.hf.save_hf`."""
        save_hf(self, directory)

    @classmethod
    def load_hf(cls, directory: str | Path, sample_rate: int | None = None) -> TransformerBackbone:
        """Build the backbone from a local ``transformers.HubertModel`` / MERT checkpoint directory
        (config.json + model.safetensors or pytorch_model.bin) and load its weights, in eval mode.

        ``sample_rate`` overrides the rate read from ``config.json`` (MERT) or
        ``preprocessor_config.json`` (``sampling_rate``); with neither, 24 kHz (MERT) is assumed.
        """
        backbone = cls(read_hf_params(directory, sample_rate))
        load_hf_weights(backbone, directory)
        return backbone.eval()
