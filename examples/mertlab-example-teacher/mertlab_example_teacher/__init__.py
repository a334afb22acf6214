"""An example third-party teacher for mertlab: frame-level loudness (log RMS energy).

Installing this package (``pip install ./examples/mertlab-example-teacher``) is all it takes
for ``mertlab plugins`` to list ``loudness`` and for a spec to use it::

    teachers:
      loud: {name: loudness, params: {hop_length: 320}}
    objectives:
      loud_recon: {name: masked_regression, teacher: loud, weight: 0.5}
"""
from __future__ import annotations

import torch
from pydantic import Field

from mertlab.contracts import Params, TargetInfo, Targets, Teacher
from mertlab.hookspecs import hookimpl


class LoudnessParams(Params):
    sample_rate: int = Field(24000, gt=0, description="Sample rate the teacher expects (Hz).")
    hop_length: int = Field(320, gt=0, description="Samples between frames (320 at 24 kHz = 75 Hz).")
    eps: float = Field(1e-5, gt=0, description="Floor added before the log, so silence stays finite.")


class LoudnessTeacher(Teacher):
    """Continuous targets: ``log(rms + eps)`` of each non-overlapping frame of ``hop_length``."""

    name = "loudness"
    summary = "Frame-level log-RMS loudness (example third-party plugin)"
    Params = LoudnessParams
    target_kind = "continuous"

    @property
    def sample_rate(self) -> int:
        return self.params.sample_rate

    @property
    def info(self) -> TargetInfo:
        return TargetInfo(kind="continuous", dim=1, frame_rate=self.params.sample_rate / self.params.hop_length)

    @torch.no_grad()
    def targets(self, wav: torch.Tensor, lengths: torch.Tensor) -> Targets:
        hop = self.params.hop_length
        frames = wav.shape[1] // hop
        chunks = wav[:, : frames * hop].reshape(wav.shape[0], frames, hop)
        rms = chunks.pow(2).mean(dim=-1).sqrt()
        values = torch.log(rms + self.params.eps).unsqueeze(-1)
        return Targets(values=values.float(), lengths=torch.div(lengths, hop, rounding_mode="floor"), info=self.info)


@hookimpl
def register_teachers(register):
    register(LoudnessTeacher)
