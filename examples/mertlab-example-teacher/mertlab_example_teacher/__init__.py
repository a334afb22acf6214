"""An example third-party teacher for mertlab: frame-level loudness (log RMS energy).

Installing this package (``mertlab plugins install ./examples/mertlab-example-teacher``) is all it takes
for ``mertlab plugins`` to list ``loudness`` and for a spec to use it::

    teachers:
      loud: {name: loudness, params: {hop_length: 320}}
    objectives:
      loud_recon: {name: masked_regression, teacher: loud, weight: 0.5}
"""

from __future__ import annotations

import torch
from pydantic import Field

from mertlab.contracts import FrameTeacher, Params
from mertlab.hookspecs import hookimpl


class LoudnessParams(Params):
    sample_rate: int = Field(24000, gt=0, description="Sample rate the teacher expects (Hz).")
    hop_length: int = Field(320, gt=0, description="Samples between frames (320 at 24 kHz = 75 Hz).")
    eps: float = Field(1e-5, gt=0, description="Floor added before the log, so silence stays finite.")


class LoudnessTeacher(FrameTeacher):
    """Continuous targets: ``log(rms + eps)`` of each non-overlapping frame of ``hop_length``.

    :class:`~mertlab.contracts.FrameTeacher` supplies ``sample_rate``/``hop_length`` (from the
    params), ``info``, the frame count ``ceil(S / hop_length)`` and zeroed padding.
    """

    name = "loudness"
    summary = "Frame-level log-RMS loudness (example third-party plugin)"
    Params = LoudnessParams
    target_kind = "continuous"
    dim = 1

    def compute(self, wav: torch.Tensor) -> torch.Tensor:
        hop = self.hop_length
        frames = self.num_frames(wav.shape[1])
        chunks = torch.nn.functional.pad(wav, (0, frames * hop - wav.shape[1])).reshape(wav.shape[0], frames, hop)
        rms = chunks.pow(2).mean(dim=-1).sqrt()
        return torch.log(rms + self.params.eps).unsqueeze(-1)


@hookimpl
def register_teachers(register):
    register(LoudnessTeacher)
