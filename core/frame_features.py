"""Frame-level audio features shared by teachers (log-mel, MFCC + deltas, chroma, backbone layers).

Every feature here is a :class:`FrameFeature`: ``feature(wav [B, S], lengths [B]) ->
(features [B, T, dim], frame_lengths [B])`` and guarantees that a padded batch gives the same
valid frames as each clip alone. Spectral features use centred frames with **zero** (constant)
padding, so a clip of ``n >= 1`` samples has ``1 + n // hop`` frames (one frame even when it is
shorter than the window): reflect padding would fail on clips shorter than half a window, and
samples past ``lengths`` are zeroed first, so padding never leaks into valid frames.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

import importlib

import torch
from torch import Tensor, nn

from mertlab.errors import MertlabError

#: Added to mel energies before the log: keeps silence finite (log(1e-6) ~ -13.8).
LOG_EPS = 1e-6


def _torchaudio():
    """torchaudio, imported on first use (it takes a second; `mertlab plugins` never needs it)."""
    return importlib.import_module("torchaudio")


def check_audio_batch(wav: Tensor, lengths: Tensor, who: str) -> None:
    """Raise a one-line :class:`MertlabError` unless ``wav`` is ``[B, S]`` and ``1 <= lengths <= S``."""
    if wav.dim() != 2:
        raise MertlabError(f"{who}: expected mono audio [batch, samples], got shape {tuple(wav.shape)}")
    if lengths.shape != (wav.shape[0],):
        raise MertlabError(f"{who}: lengths must be [batch={wav.shape[0]}], got shape {tuple(lengths.shape)}")
    if wav.shape[0] and (int(lengths.min()) < 1 or int(lengths.max()) > wav.shape[1]):
        raise MertlabError(
            f"{who}: clip lengths {lengths.tolist()} must be between 1 and the padded length {wav.shape[1]} samples"
        )


def zero_padding(wav: Tensor, lengths: Tensor) -> Tensor:
    """``wav`` with samples at and after ``lengths[b]`` set to zero."""
    steps = torch.arange(wav.shape[1], device=wav.device)
    return wav.masked_fill(steps[None, :] >= lengths.to(wav.device)[:, None], 0.0)


def centred_frames(num_samples: Tensor, hop_length: int) -> Tensor:
    """Frames of a centred STFT/CQT: ``1 + n // hop``."""
    return 1 + torch.div(num_samples, hop_length, rounding_mode="floor")


def pad_frames(frames: list[Tensor]) -> Tensor:
    """Stack ``[T_i, D]`` tensors into ``[B, max T_i, D]`` with zero padding."""
    return nn.utils.rnn.pad_sequence(frames, batch_first=True)


class FrameFeature(nn.Module, ABC):
    """A frozen frame-level feature extractor (see module docstring for the contract)."""

    @property
    @abstractmethod
    def dim(self) -> int: ...

    @property
    @abstractmethod
    def sample_rate(self) -> int: ...

    @property
    @abstractmethod
    def frame_rate(self) -> float: ...

    @abstractmethod
    def forward(self, wav: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]: ...


class _SpectralFeature(FrameFeature):
    """Common STFT settings: Hann window of ``n_fft`` samples, hop ``hop_length``, centred."""

    def __init__(self, sample_rate: int, n_fft: int, hop_length: int) -> None:
        super().__init__()
        self._sample_rate = sample_rate
        self.hop_length = hop_length
        self.n_fft = n_fft
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)

    @property
    def sample_rate(self) -> int:
        return self._sample_rate

    @property
    def frame_rate(self) -> float:
        return self._sample_rate / self.hop_length

    def _frame_lengths(self, lengths: Tensor) -> Tensor:
        return centred_frames(lengths, self.hop_length)

    def _power(self, wav: Tensor, lengths: Tensor) -> Tensor:
        """``[B, n_fft // 2 + 1, T]`` power spectrogram of the zero-padded batch."""
        return _torchaudio().functional.spectrogram(
            zero_padding(wav, lengths), pad=0, window=self.window, n_fft=self.n_fft, hop_length=self.hop_length,
            win_length=self.n_fft, power=2.0, normalized=False, center=True, pad_mode="constant",
        )


class LogMel(_SpectralFeature):
    """``log(mel power + 1e-6)``, ``n_mels`` HTK mel bands: ``[B, T, n_mels]``."""

    def __init__(self, sample_rate: int, n_fft: int, hop_length: int, n_mels: int) -> None:
        super().__init__(sample_rate, n_fft, hop_length)
        self.n_mels = n_mels
        self.mel_scale = _torchaudio().transforms.MelScale(n_mels, sample_rate, n_stft=n_fft // 2 + 1)

    @property
    def dim(self) -> int:
        return self.n_mels

    def forward(self, wav: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        mel = self.mel_scale(self._power(wav, lengths))
        return torch.log(mel + LOG_EPS).transpose(1, 2), self._frame_lengths(lengths)


class MFCCDeltas(_SpectralFeature):
    """``n_mfcc`` MFCCs (DCT of log-mel, as HuBERT iteration 1) + deltas + delta-deltas.

    Deltas are taken per clip over its valid frames, so a clip's last frames do not see padding.
    """

    def __init__(self, sample_rate: int, n_fft: int, hop_length: int, n_mels: int, n_mfcc: int) -> None:
        super().__init__(sample_rate, n_fft, hop_length)
        self.n_mfcc = n_mfcc
        # log_mels=True: log(mel + 1e-6). The default dB path clamps at (batch max - 80 dB),
        # which would make one clip's features depend on the others in its batch.
        self.mfcc = _torchaudio().transforms.MFCC(
            sample_rate, n_mfcc=n_mfcc, log_mels=True,
            melkwargs={"n_fft": n_fft, "hop_length": hop_length, "n_mels": n_mels, "center": True, "pad_mode": "constant"},
        )

    @property
    def dim(self) -> int:
        return 3 * self.n_mfcc

    def forward(self, wav: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        coeffs = self.mfcc(zero_padding(wav, lengths))  # [B, n_mfcc, T]
        frame_lengths = self._frame_lengths(lengths)
        clips = []
        for b, n in enumerate(frame_lengths.tolist()):
            c = coeffs[b, :, :n]
            d1 = _torchaudio().functional.compute_deltas(c)
            d2 = _torchaudio().functional.compute_deltas(d1)
            clips.append(torch.cat([c, d1, d2]).T)
        return pad_frames(clips), frame_lengths


def chroma_filterbank(sample_rate: int, n_fft: int, fmin: float = 27.5) -> Tensor:
    """``[12, n_fft // 2 + 1]`` 0/1 matrix folding STFT bins >= ``fmin`` onto pitch classes (C=0)."""
    freqs = torch.arange(n_fft // 2 + 1, dtype=torch.float64) * sample_rate / n_fft
    bins = torch.nonzero(freqs >= fmin).squeeze(1)
    pitch_class = torch.round(69 + 12 * torch.log2(freqs[bins] / 440.0)).long() % 12
    bank = torch.zeros(12, freqs.numel())
    bank[pitch_class, bins] = 1.0
    return bank


class LogMelChroma(_SpectralFeature):
    """MERT-v0's frame feature: log-mel (``n_mels``) followed by a 12-bin chroma.

    Chroma = STFT power folded onto pitch classes, each frame scaled by its largest class
    (librosa's ``norm=inf``), so it describes harmony independently of loudness. One STFT
    serves both halves.
    """

    def __init__(self, sample_rate: int, n_fft: int, hop_length: int, n_mels: int) -> None:
        super().__init__(sample_rate, n_fft, hop_length)
        self.n_mels = n_mels
        self.mel_scale = _torchaudio().transforms.MelScale(n_mels, sample_rate, n_stft=n_fft // 2 + 1)
        self.register_buffer("chroma_bank", chroma_filterbank(sample_rate, n_fft), persistent=False)

    @property
    def dim(self) -> int:
        return self.n_mels + 12

    def forward(self, wav: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        power = self._power(wav, lengths)
        logmel = torch.log(self.mel_scale(power) + LOG_EPS)
        chroma = torch.einsum("cf,bft->bct", self.chroma_bank, power)
        chroma = chroma / (chroma.amax(dim=1, keepdim=True) + LOG_EPS)
        return torch.cat([logmel, chroma], dim=1).transpose(1, 2), self._frame_lengths(lengths)


class BackboneLayer(FrameFeature):
    """Hidden states of layer ``layer`` of a trained mertlab backbone (HuBERT iteration 2).

    ``layer`` indexes ``BackboneOutput.hidden_states``: 0 = encoder input, ``i`` = output of
    encoder layer ``i``. Clips run one at a time: backbones with group-norm extractors give
    different frames for a padded batch, and targets must not depend on batch composition.
    """

    def __init__(self, checkpoint: str | Path, layer: int) -> None:
        super().__init__()
        from mertlab.checkpoint import load_backbone

        self.backbone = load_backbone(checkpoint).requires_grad_(False)
        if not 0 <= layer <= self.backbone.num_layers:
            raise MertlabError(
                f"layer {layer} is out of range for the backbone in {checkpoint} "
                f"({self.backbone.num_layers} layers: use 0..{self.backbone.num_layers})"
            )
        self.layer = layer

    @property
    def dim(self) -> int:
        return self.backbone.hidden_dim

    @property
    def sample_rate(self) -> int:
        return self.backbone.sample_rate

    @property
    def frame_rate(self) -> float:
        return self.backbone.frame_rate

    def train(self, mode: bool = True) -> "BackboneLayer":
        super().train(mode)
        self.backbone.eval()  # frozen feature extractor: dropout stays off
        return self

    def forward(self, wav: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        clips = []
        for b, n in enumerate(lengths.tolist()):
            frames = self.backbone.num_frames(n)
            if frames < 1:
                raise MertlabError(
                    f"clip {b} has {n} samples, too short for one frame of backbone '{self.backbone.name}'"
                )
            out = self.backbone(wav[b : b + 1, :n])
            clips.append(out.hidden_states[self.layer][0, :frames])
        frame_lengths = torch.tensor([c.shape[0] for c in clips], device=wav.device)
        return pad_frames(clips), frame_lengths
