"""DAC teacher: RVQ codes of the Descript Audio Codec (16, 24 or 44.1 kHz models)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field, model_validator
from torch import Tensor

from mertlab.contracts import Params
from mertlab.errors import WeightsError
from mertlab.hookspecs import hookimpl
from mertlab.toolkit import codec_support

ModelType = Literal["16khz", "24khz", "44khz"]
ModelBitrate = Literal["8kbps", "16kbps"]

#: Architectures of the released models (descript-audio-codec conf/final/*.yml), built for
#: ``pretrained: false``; released weight files carry their own config. Frame rate =
#: sample_rate / prod(encoder_rates): 44.1 kHz -> 86.13 Hz, 24 kHz -> 75 Hz, 16 kHz -> 50 Hz.
ARCHITECTURES: dict[tuple[str, str], dict[str, Any]] = {
    ("44khz", "8kbps"): dict(sample_rate=44100, encoder_rates=[2, 4, 8, 8], decoder_rates=[8, 8, 4, 2], n_codebooks=9),
    ("44khz", "16kbps"): dict(
        sample_rate=44100, encoder_rates=[2, 4, 8, 8], decoder_rates=[8, 8, 4, 2], n_codebooks=18, latent_dim=128
    ),
    ("24khz", "8kbps"): dict(sample_rate=24000, encoder_rates=[2, 4, 5, 8], decoder_rates=[8, 5, 4, 2], n_codebooks=32),
    ("16khz", "8kbps"): dict(sample_rate=16000, encoder_rates=[2, 4, 5, 8], decoder_rates=[8, 5, 4, 2], n_codebooks=12),
}


def default_weights(model_type: str, model_bitrate: str) -> tuple[Path, str]:
    """Where ``dac.utils.download`` caches the latest weights of a model, and their URL
    (``~/.cache/descript/dac/weights_<type>_<bitrate>_<tag>.pth``; home resolved at call time)."""
    from dac.utils import __MODEL_LATEST_TAGS__, __MODEL_URLS__

    tag = __MODEL_LATEST_TAGS__[(model_type, model_bitrate)]
    path = Path.home() / ".cache" / "descript" / "dac" / f"weights_{model_type}_{model_bitrate}_{tag}.pth"
    return path, __MODEL_URLS__[(model_type, tag, model_bitrate)]


class DACParams(Params):
    model_type: ModelType = Field("44khz", description="Which DAC model: 16khz, 24khz or 44khz (44.1 kHz).")
    model_bitrate: ModelBitrate = Field(
        "8kbps", description="Released variant: 8kbps (every model) or 16kbps (44khz only, 18 codebooks)."
    )
    n_codebooks: int | None = Field(
        None,
        gt=0,
        description="Keep the first k RVQ codebooks (null: all; 44khz: 9, 24khz: 32, 16khz: 12, 44khz 16kbps: 18).",
    )
    pretrained: bool = codec_support.pretrained_field()
    weights: str | None = Field(
        None,
        description="Path of a weights file as DAC saves it (DAC.save / dac download); null: "
        "~/.cache/descript/dac/weights_<model_type>_<model_bitrate>_<tag>.pth, dac's own cache.",
    )
    seed: int = codec_support.seed_field()
    init_seconds: float = codec_support.init_seconds_field()

    @model_validator(mode="after")
    def _consistent(self) -> DACParams:
        arch = ARCHITECTURES.get((self.model_type, self.model_bitrate))
        if arch is None:
            raise ValueError(f"model_bitrate {self.model_bitrate} exists only for model_type 44khz")
        if self.n_codebooks is not None and self.n_codebooks > arch["n_codebooks"]:
            raise ValueError(
                f"n_codebooks={self.n_codebooks} exceeds the {arch['n_codebooks']} codebooks of DAC "
                f"{self.model_type} {self.model_bitrate}"
            )
        codec_support.weights_need_pretrained(self)
        return self


def _load_weights(model_class: Any, path: Path, seed: int) -> Any:
    """A ``dac.DAC`` from a weights file in DAC's format, read with ``weights_only=True``."""
    import inspect

    state = codec_support.read_weights("dac", path)
    try:
        accepted = inspect.signature(model_class).parameters
        kwargs = {k: v for k, v in state["metadata"]["kwargs"].items() if k in accepted}
        with codec_support.seeded_build(seed):
            model = model_class(**kwargs)
        model.load_state_dict(state["state_dict"], strict=True)
    except Exception as exc:  # noqa: BLE001 - foreign files become one clear error
        raise codec_support.load_error("dac", path, exc) from exc
    return model


class DACTeacher(codec_support.CodecTeacher):
    """Discrete RVQ codes of a Descript Audio Codec model: ``[B, T, n_codebooks]``.

    * Audio must be mono at the model's rate (16000, 24000 or 44100 Hz; callers resample to
      :attr:`sample_rate`). Frame rate is sample_rate / hop length: 86.13 Hz for 44khz, which
      is not a whole number, hence the alignment utility.
    * DAC right-pads a clip of ``n`` samples to whole hops: ``ceil(n / hop)`` frames; a clip
      shorter than one hop gives one frame, an empty clip is an error.
    * DAC's encoder is not causal (its last frames see the padding), so clips are encoded in
      groups of equal length, each cropped to its valid samples: batched codes equal
      one-clip-at-a-time codes.
    * ``pretrained: true`` loads a local weights file in DAC's format (``{"state_dict",
      "metadata": {"kwargs"}}``, strict key matching) with ``weights_only=True``: unlike
      ``DAC.load``, never as a ``torch.package`` archive or a pickle that could run code; nothing is downloaded, a
      missing file is a clear error.
      ``pretrained: false`` builds the released architecture with random weights from ``seed``
      and fits each used residual codebook by a seeded spherical k-means (DAC looks codes up by
      cosine) on encoder frames of ``init_seconds`` of synthetic audio.
    * :meth:`fingerprint` covers a hash of the encoder and quantizer weights.
    """

    name = "dac"
    summary = "Descript Audio Codec RVQ codes (16/24/44.1 kHz models; 44.1 kHz: 9 x 1024 codes at 86.1 Hz)"
    Params = DACParams
    test_params = {"pretrained": False, "model_type": "16khz", "n_codebooks": 2, "init_seconds": 1.0}

    def __init__(self, params: DACParams) -> None:
        super().__init__(params)
        import dac  # imported here: dac and audiotools take seconds to import

        arch = ARCHITECTURES[(params.model_type, params.model_bitrate)]
        if params.pretrained:
            default, url = default_weights(params.model_type, params.model_bitrate)
            path = codec_support.resolve_weights(self.name, params.weights, default, url)
            model = _load_weights(dac.DAC, path, params.seed)
            if int(model.sample_rate) != arch["sample_rate"]:
                raise WeightsError(
                    f"dac teacher: weights file {path} holds a {model.sample_rate} Hz model, but model_type "
                    f"{params.model_type} is {arch['sample_rate']} Hz; set model_type to match the file"
                )
            if params.n_codebooks is not None and params.n_codebooks > int(model.n_codebooks):
                raise WeightsError(
                    f"dac teacher: weights file {path} has {model.n_codebooks} codebooks; "
                    f"n_codebooks={params.n_codebooks} is too many"
                )
        else:
            with codec_support.seeded_build(params.seed):
                model = dac.DAC(**arch)
        n_codebooks = params.n_codebooks or int(model.n_codebooks)
        self.hold(
            model, hop_length=int(model.hop_length), n_codebooks=n_codebooks, codebook_size=int(model.codebook_size)
        )

    def fit_codebooks(self, audio: Tensor, generator: torch.Generator) -> None:
        residual = self.model.encoder(self.model.preprocess(audio[:, None], self.sample_rate))
        for quantizer in self.model.quantizer.quantizers[: self.n_codebooks]:
            projected = quantizer.in_proj(residual)  # codes live in this low-dim space
            frames = projected.transpose(1, 2).reshape(-1, projected.shape[1])
            quantizer.codebook.weight.copy_(
                codec_support.fit_codebook(frames, quantizer.codebook_size, generator, spherical=True)
            )
            residual = residual - quantizer(residual)[0]

    def encode(self, audio: Tensor) -> Tensor:
        _z, codes, *_ = self.model.encode(self.model.preprocess(audio, self.sample_rate), n_quantizers=self.n_codebooks)
        return codes.transpose(1, 2)


@hookimpl
def register_teachers(register):
    register(DACTeacher)
