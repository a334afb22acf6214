"""``cqt``: constant-Q transform magnitudes (nnAudio's, or an FFT-based equal within 1e-3), MERT's
musical teacher (continuous targets)."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, model_validator
from torch import Tensor

from mertlab.contracts import Params, TargetInfo
from mertlab.hookspecs import hookimpl
from mertlab.plugins.teachers.fast_cqt import FFTCQT
from mertlab.toolkit.frame_features import CheckedFrameTeacher, centred_frames, standardise_clips, zero_padding


class CQTParams(Params):
    """Defaults are MERT's (the MERT paper (arXiv 2306.00107) and its peers): 24 kHz, fmin 32.7 Hz (C1), 336 bins,
    48 bins/octave (7 octaves), hop 320 (75 Hz, the default backbone's frame rate), raw linear magnitude."""

    sample_rate: int = Field(24000, gt=0, description="Sample rate (Hz) the teacher expects (MERT: 24000).")
    hop_length: int = Field(
        320, gt=0, description="Hop in samples; frame rate = sample_rate / hop_length (MERT: 320 -> 75 Hz)."
    )
    fmin: float = Field(32.7, gt=0, description="Centre frequency (Hz) of the lowest bin (MERT: 32.7, C1).")
    n_bins: int = Field(336, gt=0, description="Number of CQT bins = target dim (MERT: 336).")
    bins_per_octave: int = Field(48, gt=0, description="Bins per octave (MERT: 48).")
    magnitude: Literal["linear", "log", "log1p"] = Field(
        "linear", description="linear: |CQT| (MERT); log: log(|CQT| + log_eps); log1p: log(1 + |CQT|)."
    )
    log_eps: float = Field(
        1e-5, gt=0, description="Offset inside the log for magnitude=log (sets the floor for silence)."
    )
    implementation: Literal["fast", "exact"] = Field(
        "fast",
        description="fast: an FFT-based CQT (mertlab.plugins.teachers.fast_cqt, ~7x librosa.cqt on CPU at MERT's "
        "settings); its magnitudes equal exact's within a relative L2 error of 1e-3 and a largest error of 1e-3 of "
        "the clip's largest magnitude (measured ~1.3e-4 and ~1.1e-4). exact: nnAudio's CQT1992v2 (time-domain "
        "convolution with the full-length kernels, ~0.1x librosa.cqt).",
    )
    normalize: Literal["none", "per_bin", "global"] = Field(
        "none",
        description="Standardise each clip over its valid frames after the magnitude step: per_bin: every bin to "
        "zero mean and unit std; global: one mean/std over all bins; none: raw values (MERT).",
    )

    @model_validator(mode="after")
    def _top_bin_below_nyquist(self) -> CQTParams:
        top = self.fmin * 2 ** ((self.n_bins - 1) / self.bins_per_octave)
        if top >= self.sample_rate / 2:
            raise ValueError(
                f"the top CQT bin ({top:.0f} Hz = fmin * 2^((n_bins-1)/bins_per_octave)) must be below "
                f"Nyquist ({self.sample_rate / 2:.0f} Hz): lower n_bins or fmin"
            )
        return self


class CQTTeacher(CheckedFrameTeacher):
    """Constant-Q magnitudes as ``[B, T, n_bins]`` float32 regression targets.

    Frames are centred: a clip of ``n`` samples has ``1 + n // hop_length`` frames (one more than
    a codec's ``ceil(n / hop)`` for whole hops; :func:`mertlab.toolkit.align.align_targets` drops it).
    The signal is zero-padded by half a kernel on each side (nnAudio ``pad_mode="constant"``):
    the lowest bin's kernel is 65536 samples long at the defaults, and nnAudio's default
    reflect padding fails for any clip up to half that length. Samples past ``lengths`` are
    zeroed first, so a padded batch gives the same valid frames as each clip alone.
    Normalisation statistics are per clip (valid frames only), never across the batch.
    ``implementation: fast`` (the default) computes the same magnitudes by FFT
    (:mod:`mertlab.plugins.teachers.fast_cqt`), equal to nnAudio's within 1e-3 (see the param).
    """

    name = "cqt"
    summary = "Constant-Q transform magnitudes (FFT-based or nnAudio): MERT's musical teacher"
    Params = CQTParams
    target_kind = "continuous"
    test_params = {"n_bins": 24, "bins_per_octave": 12, "fmin": 65.4}  # 2 octaves: an 8192-sample kernel
    params: CQTParams

    def __init__(self, params: CQTParams) -> None:
        super().__init__(params)
        self.target_info = TargetInfo(
            kind="continuous", dim=params.n_bins, frame_rate=params.sample_rate / params.hop_length
        )
        if params.implementation == "fast":
            self.cqt = FFTCQT(params.sample_rate, params.hop_length, params.fmin, params.n_bins, params.bins_per_octave)
            return
        from nnAudio.features import CQT  # imported here: nnAudio is slow to import

        self.cqt = CQT(
            sr=params.sample_rate,
            hop_length=params.hop_length,
            fmin=params.fmin,
            n_bins=params.n_bins,
            bins_per_octave=params.bins_per_octave,
            center=True,
            pad_mode="constant",
            trainable=False,
            output_format="Magnitude",
            verbose=False,
        )
        # The kernels (~176 MB at MERT's settings) follow from the params: keep them out of
        # state_dict so checkpoints of a model holding this teacher stay small.
        for name, buffer in list(self.cqt.named_buffers(recurse=False)):
            self.cqt.register_buffer(name, buffer, persistent=False)

    def frame_targets(self, wav: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        mag = self.cqt(zero_padding(wav, lengths)).transpose(1, 2)  # [B, T, n_bins]
        frame_lengths = centred_frames(lengths, self.params.hop_length)
        values = self._magnitude(mag)
        if self.params.normalize != "none":
            values = standardise_clips(values, frame_lengths, per_dim=self.params.normalize == "per_bin")
        return values, frame_lengths

    def _magnitude(self, mag: Tensor) -> Tensor:
        if self.params.magnitude == "log":
            return torch.log(mag + self.params.log_eps)
        if self.params.magnitude == "log1p":
            return torch.log1p(mag)
        return mag


@hookimpl
def register_teachers(register) -> None:
    register(CQTTeacher)
