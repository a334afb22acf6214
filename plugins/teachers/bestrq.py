"""``bestrq``: BEST-RQ random-projection quantiser targets (as in MusicFM), discrete."""

from __future__ import annotations

import hashlib
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from mertlab.contracts import Params, TargetInfo
from mertlab.hookspecs import hookimpl
from mertlab.toolkit.frame_features import CheckedFrameTeacher, StackedLogMel


class BestRQParams(Params):
    """MusicFM's recipe (the MERT paper (arXiv 2306.00107) and its peers: 128 log-mel bins, stacked, normalised,
    Xavier projection to 16 dims, 4096-code random codebook, cosine) on MERT's 75 Hz grid: mel hop 80 x 4 stacked
    frames = 320 samples per target at 24 kHz (MusicFM: hop 240 x 4 -> 25 Hz)."""

    sample_rate: int = Field(24000, gt=0, description="Sample rate (Hz) the teacher expects.")
    n_fft: int = Field(2048, gt=0, description="STFT size (Hann window) of the log-mel (MusicFM: 2048).")
    hop_length: int = Field(
        80, gt=0, description="Mel hop in samples; frame rate = sample_rate / (hop_length * stack_frames)."
    )
    n_mels: int = Field(128, gt=0, description="Mel bands (MusicFM: 128).")
    stack_frames: int = Field(
        4, ge=1, description="Consecutive mel frames concatenated into one target frame (MusicFM: 4)."
    )
    normalize: Literal["per_clip", "none"] = Field(
        "per_clip",
        description="per_clip: standardise each mel bin over the clip's valid frames before projecting (MusicFM "
        "uses dataset statistics; per-clip needs none and is loudness-invariant); none: raw log-mel.",
    )
    proj_dim: int = Field(16, gt=0, description="Random projection / codebook dimension (BEST-RQ: 16).")
    codebook_size: int = Field(4096, ge=2, description="Codes per codebook (MusicFM: 4096).")
    n_codebooks: int = Field(1, ge=1, description="Independent projection + codebook pairs = target channels.")
    seed: int = Field(0, description="Seed of the frozen projections and codebooks.")


class BestRQTeacher(CheckedFrameTeacher):
    """Codes ``[B, T, n_codebooks]`` (int64) from frozen random projections of stacked log-mels.

    Per codebook: ``argmax_k cos(P^T x, e_k)`` with ``P`` Xavier-normal ``[n_mels * stack, proj_dim]``
    and ``e_k`` standard-normal, both drawn from ``seed`` and stored as buffers (the fingerprint
    hashes them). A clip of ``n`` samples has
    ``(1 + n // hop_length) // stack_frames`` frames (centred mel frames, incomplete stacks
    dropped); a clip too short for one frame is an error. Silent clips map to code 0 (all
    similarities are zero after per-clip normalisation).
    """

    projection: Tensor  # buffers
    codebooks: Tensor

    name = "bestrq"
    summary = "BEST-RQ: frozen random projection + random codebook of stacked log-mels (MusicFM)"
    Params = BestRQParams
    target_kind = "discrete"
    test_params = {"codebook_size": 256, "n_codebooks": 2}
    params: BestRQParams

    def __init__(self, params: BestRQParams) -> None:
        super().__init__(params)
        self.logmel = StackedLogMel(
            params.sample_rate,
            params.n_fft,
            params.hop_length,
            params.n_mels,
            params.stack_frames,
            self.label,
            standardise=params.normalize == "per_clip",
        )
        generator = torch.Generator().manual_seed(params.seed)
        projection = torch.empty(params.n_codebooks, self.logmel.dim, params.proj_dim)
        for p in projection:
            torch.nn.init.xavier_normal_(p, generator=generator)
        codebooks = torch.randn(params.n_codebooks, params.codebook_size, params.proj_dim, generator=generator)
        self.register_buffer("projection", projection)
        self.register_buffer("codebooks", F.normalize(codebooks, dim=-1))
        vocab_sizes = (params.codebook_size,) * params.n_codebooks
        self.target_info = TargetInfo("discrete", params.n_codebooks, self.logmel.frame_rate, vocab_sizes)

    @property
    def samples_per_frame(self) -> int:
        return self.params.hop_length * self.params.stack_frames

    def frame_targets(self, wav: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        stacked, frame_lengths = self.logmel(wav, lengths)  # [B, T, stack_frames * n_mels]
        z = F.normalize(torch.einsum("btd,cdp->btcp", stacked, self.projection), dim=-1)
        return torch.einsum("btcp,ckp->btck", z, self.codebooks).argmax(-1), frame_lengths  # cosine: both unit-norm

    def fingerprint_payload(self) -> Any:
        # The buffers follow from the seed, but a loaded state_dict may carry other ones.
        h = hashlib.sha256()
        for t in (self.projection, self.codebooks):
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()[:16]


@hookimpl
def register_teachers(register) -> None:
    register(BestRQTeacher)
