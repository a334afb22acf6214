"""EnCodec teacher: MERT's acoustic teacher (RVQ codes of the 24 kHz EnCodec model)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from pydantic import Field, field_validator, model_validator
from torch import Tensor

from mertlab import codec_support
from mertlab.contracts import Params, TargetInfo, Targets, Teacher
from mertlab.hookspecs import hookimpl

SAMPLE_RATE = 24_000
#: Samples per frame: product of the SEANet encoder ratios (8, 5, 4, 2) -> 75 Hz.
HOP_LENGTH = 320
CODEBOOK_SIZE = 1024
#: RVQ codebooks per target bandwidth of the 24 kHz model: kbps / (10 bits * 75 Hz).
#: MERT uses 6 kbps -> 8 codebooks x 1024 codes at 75 Hz (the MERT paper (arXiv 2306.00107) and its peers).
CODEBOOKS_PER_BANDWIDTH: dict[float, int] = {1.5: 2, 3.0: 4, 6.0: 8, 12.0: 16, 24.0: 32}
#: File name used by ``EncodecModel.encodec_model_24khz`` (torch hub checkpoints directory).
CHECKPOINT_NAME = "encodec_24khz-d7cc33bc.th"
#: Lloyd iterations of the codebook fit for ``pretrained: false``.
KMEANS_ITERS = 20


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
    pretrained: bool = Field(
        True,
        description="Load the released weights from a local file; false builds the architecture with "
        "seeded random weights and k-means-fitted codebooks (tests, quickstart: codes carry no meaning).",
    )
    weights: str | None = Field(
        None,
        description="Path of the checkpoint (a state_dict saved with torch.save); null: "
        f"<torch hub dir>/checkpoints/{CHECKPOINT_NAME}, where the encodec package caches it.",
    )
    seed: int = Field(0, ge=0, description="Seed of the random weights and codebook fit (pretrained: false only).")
    init_seconds: float = Field(
        8.0,
        gt=0,
        le=600,
        description="Seconds of seeded synthetic audio whose encoder frames fit the random codebooks "
        "(pretrained: false only; 75 frames per second, one fitted code per 4 frames, up to 1024).",
    )

    @field_validator("bandwidth")
    @classmethod
    def _known_bandwidth(cls, value: float) -> float:
        if value not in CODEBOOKS_PER_BANDWIDTH:
            known = ", ".join(f"{bw:g}" for bw in CODEBOOKS_PER_BANDWIDTH)
            raise ValueError(f"EnCodec 24 kHz supports bandwidths {known} kbps; got {value:g}")
        return float(value)

    @model_validator(mode="after")
    def _consistent(self) -> "EncodecParams":
        available = CODEBOOKS_PER_BANDWIDTH[self.bandwidth]
        if self.n_codebooks is not None and self.n_codebooks > available:
            raise ValueError(
                f"n_codebooks={self.n_codebooks} exceeds the {available} codebooks of bandwidth {self.bandwidth:g} kbps; "
                "raise bandwidth or lower n_codebooks"
            )
        if self.weights is not None and not self.pretrained:
            raise ValueError("weights is set but pretrained is false; drop one of them")
        return self


class EncodecTeacher(Teacher):
    """Discrete RVQ codes of the causal 24 kHz EnCodec model: ``[B, T, n_codebooks]`` at 75 Hz.

    * Audio must be mono at 24 kHz (callers resample to :attr:`sample_rate`); the 24 kHz model
      does not normalise loudness (``normalize=False``), and neither does this teacher.
    * A clip of ``n`` samples gives ``ceil(n / 320)`` frames (EnCodec pads the last frame); a
      clip shorter than one frame gives one frame, an empty clip is an error.
    * Clips in a batch are encoded in groups of equal length, so batched codes equal
      one-clip-at-a-time codes (padding never leaks into a clip's last frames).
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
    target_kind = "discrete"

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
        self.model = model.eval().requires_grad_(False)
        self._bandwidth_codebooks = model.quantizer.get_num_quantizers_for_bandwidth(model.frame_rate, params.bandwidth)
        self.n_codebooks = params.n_codebooks or self._bandwidth_codebooks
        if not params.pretrained:
            self._fit_codebooks(params.seed, params.init_seconds)
        self._weights_hash = codec_support.state_hash(
            {k: v for k, v in self.model.state_dict().items() if k.startswith(("encoder.", "quantizer."))}
        )

    @torch.no_grad()
    def _fit_codebooks(self, seed: int, seconds: float) -> None:
        """Fit the used residual codebooks, in order, on encoder frames of synthetic audio."""
        generator = torch.Generator().manual_seed(seed)
        audio = codec_support.calibration_audio(SAMPLE_RATE, seconds, generator)
        emb = self.model.encoder(audio[:, None])  # [clips, D, T]
        residual = emb.transpose(0, 1).reshape(1, emb.shape[1], -1)  # all frames as one [1, D, N] sequence
        for layer in self.model.quantizer.vq.layers[: self._bandwidth_codebooks]:
            frames = residual[0].T
            centroids = codec_support.fit_codebook(frames, CODEBOOK_SIZE, KMEANS_ITERS, generator)
            book = layer._codebook
            book.embed.copy_(centroids)
            book.embed_avg.copy_(centroids)
            counts = torch.bincount(codec_support.nearest(frames, centroids), minlength=CODEBOOK_SIZE)
            book.cluster_size.copy_(counts.float())
            book.inited.fill_(1.0)  # as EnCodec's own k-means init marks it
            residual = residual - layer.decode(layer.encode(residual))

    def train(self, mode: bool = True) -> "EncodecTeacher":
        super().train(mode)
        self.model.eval()  # a frozen teacher: the codec never switches to training behaviour
        return self

    @property
    def sample_rate(self) -> int:
        return SAMPLE_RATE

    @property
    def info(self) -> TargetInfo:
        return TargetInfo(
            kind="discrete",
            dim=self.n_codebooks,
            frame_rate=SAMPLE_RATE / HOP_LENGTH,
            vocab_sizes=(CODEBOOK_SIZE,) * self.n_codebooks,
        )

    def num_frames(self, num_samples: int) -> int:
        """Frames for a clip of ``num_samples`` samples (>= 1)."""
        return -(-num_samples // HOP_LENGTH)

    @torch.no_grad()
    def targets(self, wav: Tensor, lengths: Tensor) -> Targets:
        lens = codec_support.check_audio_batch(self.name, wav, lengths)
        values, frames = codec_support.encode_by_length(wav, lens, self._encode)
        return Targets(values=values, lengths=frames, info=self.info)

    def _encode(self, wav: Tensor) -> Tensor:
        """``[b, n]`` clips of one length -> ``[b, T, n_codebooks]`` codes."""
        weight = next(self.model.parameters())
        (codes, _scale), = self.model.encode(wav[:, None].to(device=weight.device, dtype=weight.dtype))
        return codes[:, : self.n_codebooks].transpose(1, 2)

    def fingerprint_payload(self) -> Any:
        return {"weights_sha256": self._weights_hash}


@hookimpl
def register_teachers(register):
    register(EncodecTeacher)
