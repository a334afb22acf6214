"""Deliberately broken teachers, each making one of the mistakes a plugin author can make.

The output-broken ones register through :func:`register_teachers` (tests install this module
into a plugin manager they build, as a distribution ``broken-teachers 0.0.1``); the ones that
break the registration contract are separate plugin objects (:data:`REGISTRATION_BROKEN`),
since one of them fails the whole registry.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from mertlab.contracts import FrameTeacher, Params, TargetInfo, Targets
from mertlab.hookspecs import hookimpl


class FrameParams(Params):
    sample_rate: int = Field(24000, gt=0, description="Sample rate (Hz).")
    hop_length: int = Field(320, gt=0, description="Samples between frames.")


def frames_of(teacher: FrameTeacher, wav: torch.Tensor) -> torch.Tensor:
    """``[B, T, hop]``: ``wav`` zero-padded to whole frames of the teacher's hop and cut into them."""
    hop, frames = teacher.hop_length, teacher.num_frames(wav.shape[1])
    return torch.nn.functional.pad(wav, (0, frames * hop - wav.shape[1])).reshape(wav.shape[0], frames, hop)


def log_energy(chunks: torch.Tensor) -> torch.Tensor:
    """``[B, T]`` log mean square of each frame of ``chunks`` ``[B, T, hop]``."""
    return torch.log(chunks.pow(2).mean(-1) + 1e-5)


class LogEnergy(FrameTeacher):
    """A correct teacher: log energy and mean absolute value per frame (the broken ones change one thing)."""

    name = "log_energy"
    summary = "log energy per frame (correct baseline)"
    Params = FrameParams
    target_kind = "continuous"
    dim = 2

    def compute(self, wav: torch.Tensor) -> torch.Tensor:
        chunks = frames_of(self, wav)
        return torch.stack([log_energy(chunks), chunks.abs().mean(-1)], dim=-1)


class EnergyCodes(LogEnergy):
    """A correct discrete teacher: the log energy quantised into 8 levels."""

    name = "energy_codes"
    summary = "quantised log energy per frame (correct baseline)"
    target_kind = "discrete"
    vocab_sizes = (8,)

    def compute(self, wav: torch.Tensor) -> torch.Tensor:
        energy = super().compute(wav)[..., :1]
        return ((energy + 12) / 12 * 8).floor().clamp(0, 7).long()


class OnsetLevelsParams(FrameParams):
    levels: int = Field(8, ge=2, description="Quantisation steps of the onset strength: the vocabulary size.")


class OnsetLevels(FrameTeacher):
    """Onset strength quantised into `levels` codes per frame (discrete)."""

    name = "onset_levels"
    summary = "Onset strength in `levels` quantisation steps"
    Params = OnsetLevelsParams
    target_kind = "discrete"

    @property
    def vocab_sizes(self) -> tuple[int, ...]:
        return (self.params.levels,)  # one codebook of `levels` codes

    def compute(self, wav: torch.Tensor) -> torch.Tensor:
        energy = log_energy(frames_of(self, wav))  # [B, T]
        onset = torch.relu(energy - torch.cat([energy[:, :1], energy[:, :-1]], dim=1))
        scaled = onset / (onset.amax(dim=1, keepdim=True) + 1e-8) * (self.params.levels - 1)
        return scaled.round().long()[..., None]  # [B, T, 1] codes in [0, levels)


class RateTimesFour(LogEnergy):
    """Produces 4x the frames its info.frame_rate implies (hop/4, rate claimed for hop)."""

    name = "rate_x4"
    summary = "4x the frames info.frame_rate implies"

    @property
    def info(self) -> TargetInfo:
        return TargetInfo("continuous", 2, self.sample_rate / self.params.hop_length)

    @property
    def hop_length(self) -> int:
        return self.params.hop_length // 4


class RateQuarter(RateTimesFour):
    """Produces a quarter of the frames its info.frame_rate implies."""

    name = "rate_x0_25"
    summary = "a quarter of the frames info.frame_rate implies"

    @property
    def hop_length(self) -> int:
        return self.params.hop_length * 4


class CodesOutOfRange(EnergyCodes):
    """Codes up to 8 * 2 - 1 with a vocabulary of 8."""

    name = "codes_out_of_range"
    summary = "codes beyond the vocabulary"

    def compute(self, wav: torch.Tensor) -> torch.Tensor:
        return super().compute(wav) * 2 + 1


class FloatCodes(EnergyCodes):
    """Discrete teacher returning float codes."""

    name = "float_codes"
    summary = "float codes for a discrete teacher"

    def targets(self, wav: torch.Tensor, lengths: torch.Tensor) -> Targets:
        out = super().targets(wav, lengths)
        return Targets(out.values.float(), out.lengths, out.info)


class ChannelsFirst(LogEnergy):
    """Returns ``[B, dim, T]``."""

    name = "channels_first"
    summary = "channels-first values"

    def targets(self, wav: torch.Tensor, lengths: torch.Tensor) -> Targets:
        out = super().targets(wav, lengths)
        return Targets(out.values.transpose(1, 2), out.lengths, out.info)


class LengthsPastT(LogEnergy):
    """Claims more valid frames than it returns."""

    name = "lengths_past_t"
    summary = "lengths larger than T"

    def targets(self, wav: torch.Tensor, lengths: torch.Tensor) -> Targets:
        out = super().targets(wav, lengths)
        return Targets(out.values, out.lengths + 5, out.info)


class NaNValues(LogEnergy):
    """A NaN in every clip's first frame."""

    name = "nan_values"
    summary = "NaN targets"

    def compute(self, wav: torch.Tensor) -> torch.Tensor:
        values = super().compute(wav)
        values[:, 0, 0] = float("nan")
        return values


class NumpyValues(LogEnergy):
    """compute() returns a numpy array."""

    name = "numpy_values"
    summary = "numpy targets"

    def compute(self, wav: torch.Tensor):  # type: ignore[override]
        return super().compute(wav).numpy()


class TupleValues(LogEnergy):
    """compute() returns its tensor wrapped in a tuple."""

    name = "tuple_values"
    summary = "targets in a tuple"

    def compute(self, wav: torch.Tensor):  # type: ignore[override]
        return (super().compute(wav),)


OUTPUT_BROKEN = {
    "rate_x4": "frames",
    "rate_x0_25": "valid frames",
    "codes_out_of_range": "codes must lie in [0, 8)",
    "float_codes": "must be integer codes",
    "channels_first": "channels-first",
    "lengths_past_t": "must lie in [0, T=",
    "nan_values": "non-finite",
    "numpy_values": "compute() must return a torch.Tensor [B, frames, dim], got numpy.ndarray (convert it",
    "tuple_values": "compute() must return a torch.Tensor [B, frames, dim], got tuple of 1 (return the tensor",
}


@hookimpl
def register_teachers(register):
    for teacher in (
        LogEnergy,
        EnergyCodes,
        OnsetLevels,
        RateTimesFour,
        RateQuarter,
        CodesOutOfRange,
        FloatCodes,
        ChannelsFirst,
        LengthsPastT,
        NaNValues,
        NumpyValues,
        TupleValues,
    ):
        register(teacher)


# --------------------------------------------------------------------------- registration-broken
class UndocumentedParams(Params):
    window: int = Field(1024, gt=0)


class MissingDescription(LogEnergy):
    name = "missing_description"
    Params = UndocumentedParams


class BadTargetKind(LogEnergy):
    name = "bad_target_kind"
    target_kind: Literal["continous"] = "continous"  # type: ignore[assignment]


class _Registers:
    """A plugin object registering one teacher class."""

    def __init__(self, teacher: type) -> None:
        self.teacher = teacher

    @hookimpl
    def register_teachers(self, register):
        register(self.teacher)


REGISTRATION_BROKEN = {
    "missing_description": (_Registers(MissingDescription), "Params field 'window' has no description"),
    "bad_target_kind": (
        _Registers(BadTargetKind),
        "`target_kind` must be one of 'discrete', 'continuous', got 'continous'",
    ),
}
