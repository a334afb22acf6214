"""A log-mel spectrogram frontend shared by backbones (the ``conformer``, and the ``transformer``
with ``frontend: mel``): fixed nnAudio STFT/mel kernels and a per-bin affine normalisation.
"""

from __future__ import annotations

from typing import overload

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@overload
def ceil_div(a: int, b: int) -> int: ...
@overload
def ceil_div(a: Tensor, b: int) -> Tensor: ...
def ceil_div(a: int | Tensor, b: int) -> int | Tensor:
    """``ceil(a / b)`` for ints and integer tensors."""
    return -(-a // b)


class LogMelFrontend(nn.Module):
    """Log-mel spectrogram (nnAudio, fixed kernels) in dB with a per-bin affine normalisation
    ``db * scale + shift`` (initialised to ``(db - db_mean) / db_std``; learnable or fixed).

    Produces ``ceil(S / hop)`` frames: the signal is zero-padded by ``n_fft - 1`` samples in total,
    ``(n_fft - hop) // 2`` on the left, so frame ``t`` is centred on samples ``[t*hop, (t+1)*hop)``.
    Zero padding (not reflect) works for clips of any length >= 1 sample and equals the zeros
    that follow a clip inside a padded batch.
    """

    def __init__(
        self,
        sample_rate: int,
        n_fft: int,
        hop_length: int,
        n_mels: int,
        f_min: float = 0.0,
        f_max: float | None = None,
        db_mean: float = -5.0,
        db_std: float = 20.0,
        learnable: bool = True,
    ) -> None:
        super().__init__()
        self.hop_length = hop_length
        self.pad = (n_fft - hop_length) // 2, n_fft - 1 - (n_fft - hop_length) // 2
        from nnAudio.features import MelSpectrogram  # imported here: nnAudio is slow to import

        self.mel = MelSpectrogram(
            sr=sample_rate,
            n_fft=n_fft,
            n_mels=n_mels,
            hop_length=hop_length,
            center=False,
            fmin=f_min,
            fmax=f_max,
            power=2.0,
            trainable_mel=False,
            trainable_STFT=False,
            verbose=False,
        )
        # The STFT/mel kernels are a deterministic function of the params (up to 16 MB at n_fft
        # 2048): keep them out of checkpoints.
        for module in self.mel.modules():
            for name, buf in list(module._buffers.items()):
                module.register_buffer(name, buf, persistent=False)
        scale = torch.full((n_mels,), 1.0 / db_std)
        shift = torch.full((n_mels,), -db_mean / db_std)
        if learnable:
            self.scale, self.shift = nn.Parameter(scale), nn.Parameter(shift)
        else:
            self.register_buffer("scale", scale)
            self.register_buffer("shift", shift)

    def num_frames(self, num_samples: int | Tensor) -> int | Tensor:
        """``ceil(S / hop)`` frames for ``S`` samples."""
        return ceil_div(num_samples, self.hop_length)

    def forward(self, wav: Tensor) -> Tensor:
        """``[B, S]`` -> ``[B, ceil(S / hop), n_mels]`` normalised log-mel (fp32)."""
        # fp32 regardless of autocast: the STFT sums n_fft products and the log needs range.
        with torch.autocast(device_type=wav.device.type, enabled=False):
            spec = self.mel(F.pad(wav.float(), self.pad))  # [B, n_mels, T]
            db = 10.0 * torch.log10(spec.clamp_min(1e-10))  # torchaudio AmplitudeToDB(power), as MusicFM
            return db.transpose(1, 2) * self.scale + self.shift
