"""EnCodec teacher: MERT's acoustic teacher (RVQ codes of the 24 kHz EnCodec model)."""

from __future__ import annotations

from pathlib import Path

import torch
from pydantic import Field, field_validator, model_validator
from torch import Tensor

from mertlab.contracts import Params
from mertlab.hookspecs import hookimpl
from mertlab.toolkit import codec_support
from mertlab.toolkit.kmeans import nearest_centroid

#: Samples per frame: product of the SEANet encoder ratios (8, 5, 4, 2) -> 75 Hz.
HOP_LENGTH = 320
CODEBOOK_SIZE = 1024
#: RVQ codebooks per target bandwidth of the 24 kHz model: kbps / (10 bits * 75 Hz).
#: MERT uses 6 kbps -> 8 codebooks x 1024 codes at 75 Hz (the MERT paper (arXiv 2306.00107) and its peers).
CODEBOOKS_PER_BANDWIDTH: dict[float, int] = {1.5: 2, 3.0: 4, 6.0: 8, 12.0: 16, 24.0: 32}
#: File name used by ``EncodecModel.encodec_model_24khz`` (torch hub checkpoints directory).
CHECKPOINT_NAME = "encodec_24khz-d7cc33bc.th"


def default_weights_path() -> Path:
    """Where ``encodec`` caches its checkpoint: ``<torch hub dir>/checkpoints/<name>``
    (resolved at call time, so ``TORCH_HOME`` / ``torch.hub.set_dir`` are honoured)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / CHECKPOINT_NAME


class EncodecParams(Params):
    bandwidth: float = Field(
        6.0,
        description="Target bandwidth in kbps: 1.5, 3, 6, 12 or 24 -> 2, 4, 8, 16 or 32 RVQ codebooks "
        "(MERT: 6 kbps -> 8 codebooks).",
    )
    n_codebooks: int | None = Field(
        None, gt=0, description="Keep only the first k codebooks of the bandwidth (null: all of them)."
    )
    pretrained: bool = codec_support.pretrained_field()
    weights: str | None = Field(
        None,
        description="Path of the checkpoint (a state_dict saved with torch.save); null: "
        f"<torch hub dir>/checkpoints/{CHECKPOINT_NAME}, where the encodec package caches it.",
    )
    seed: int = codec_support.seed_field()
    init_seconds: float = codec_support.init_seconds_field()

    @field_validator("bandwidth")
    @classmethod
    def _known_bandwidth(cls, value: float) -> float:
        if value not in CODEBOOKS_PER_BANDWIDTH:
            known = ", ".join(f"{bw:g}" for bw in CODEBOOKS_PER_BANDWIDTH)
            raise ValueError(f"EnCodec 24 kHz supports bandwidths {known} kbps; got {value:g}")
        return float(value)

    @model_validator(mode="after")
    def _consistent(self) -> EncodecParams:
        available = CODEBOOKS_PER_BANDWIDTH[self.bandwidth]
        if self.n_codebooks is not None and self.n_codebooks > available:
            raise ValueError(
                f"n_codebooks={self.n_codebooks} exceeds the {available} codebooks of bandwidth {self.bandwidth:g} "
                "kbps; "
                "raise bandwidth or lower n_codebooks"
            )
        codec_support.weights_need_pretrained(self)
        return self


class EncodecTeacher(codec_support.CodecTeacher):
    """Discrete RVQ codes of the causal 24 kHz EnCodec model: ``[B, T, n_codebooks]`` at 75 Hz.

    * Audio must be mono at 24 kHz (callers resample to :attr:`sample_rate`); the 24 kHz model
      does not normalise loudness (``normalize=False``), and neither does this teacher.
    * A clip of ``n`` samples gives ``ceil(n / 320)`` frames (EnCodec pads the last frame); a
      clip shorter than one frame gives one frame, an empty clip is an error.
    * Clips in a batch are encoded in groups of equal length, so padding never leaks into a
      clip's last frames. Batched codes equal one-clip-at-a-time codes up to float rounding: at
      another batch size the encoder's convolutions may sum in another order, which flips rare
      near-tie codes (98.4% equal for 8 x 5 s clips in ``bench/teachers.py``).
    * ``pretrained: true`` loads a local checkpoint (nothing is downloaded; a missing file is a
      clear error). ``pretrained: false`` builds the real architecture with random weights from
      ``seed``; since its codebooks start empty (EnCodec initialises them by k-means on the
      first training batch), each residual codebook is fitted by a seeded k-means on the
      encoder output of ``init_seconds`` of synthetic audio, so the codes are diverse and
      depend only on the params.
    * :meth:`fingerprint` covers a hash of the encoder and quantizer weights.
    """

    name = "encodec"
    summary = "EnCodec 24 kHz RVQ codes (MERT's acoustic teacher: 6 kbps -> 8 x 1024 codes at 75 Hz)"
    Params = EncodecParams
    test_params = {"pretrained": False, "bandwidth": 1.5, "init_seconds": 1.0}

    def __init__(self, params: EncodecParams) -> None:
        super().__init__(params)
        from encodec import EncodecModel  # imported here: the package takes seconds to import

        with codec_support.seeded_build(params.seed):
            model = EncodecModel.encodec_model_24khz(pretrained=False)
        if params.pretrained:
            from encodec.model import ROOT_URL

            path = codec_support.resolve_weights(
                self.name, params.weights, default_weights_path(), ROOT_URL + CHECKPOINT_NAME
            )
            state = codec_support.read_weights(self.name, path)
            try:
                model.load_state_dict(state)
            except Exception as exc:  # noqa: BLE001 - unreadable or foreign files become one clear error
                raise codec_support.load_error(self.name, path, exc) from exc
        model.set_target_bandwidth(params.bandwidth)
        self._bandwidth_codebooks = model.quantizer.get_num_quantizers_for_bandwidth(model.frame_rate, params.bandwidth)
        n_codebooks = params.n_codebooks or self._bandwidth_codebooks
        self.hold(model, hop_length=HOP_LENGTH, n_codebooks=n_codebooks, codebook_size=CODEBOOK_SIZE)

    def fit_codebooks(self, audio: Tensor, generator: torch.Generator) -> None:
        emb = self.model.encoder(audio[:, None])  # [clips, D, T]
        residual = emb.transpose(0, 1).reshape(1, emb.shape[1], -1)  # all frames as one [1, D, N] sequence
        for layer in self.model.quantizer.vq.layers[: self._bandwidth_codebooks]:
            frames = residual[0].T
            centroids = codec_support.fit_codebook(frames, CODEBOOK_SIZE, generator)
            book = layer._codebook
            book.embed.copy_(centroids)
            book.embed_avg.copy_(centroids)
            counts = torch.bincount(nearest_centroid(frames, centroids), minlength=CODEBOOK_SIZE)
            book.cluster_size.copy_(counts.float())
            book.inited.fill_(1.0)  # as EnCodec's own k-means init marks it
            residual = residual - layer.decode(layer.encode(residual))

    def encode(self, audio: Tensor) -> Tensor:
        ((codes, _scale),) = self.model.encode(audio)
        return codes[:, : self.n_codebooks].transpose(1, 2)


@hookimpl
def register_teachers(register):
    register(EncodecTeacher)
