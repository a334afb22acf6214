"""The boundary between a teacher and the rest of mertlab: every target tensor is checked here.

:func:`check_targets` runs on what ``Teacher.targets`` returns, wherever it runs (training on
the fly, ``mertlab targets build``), and :func:`check_cached_values` on what the target cache
returns. A violation is one :class:`~mertlab.errors.TeacherOutputError` line that names the
teacher, the plugin distribution it comes from, what was expected and what came -- never a
traceback from deep inside an objective and never a silent cast.

The checks (see the frame-timing convention on :class:`mertlab.contracts.Teacher`):

* ``values`` is ``[B, T, C]`` with ``C == info.dim``; codes are integers (any integer dtype,
  widened to int64), features are floating point (returned as float32);
* codes of codebook ``c`` lie in ``[0, info.vocab_sizes[c])`` and features are finite, on the
  valid frames (frames past ``lengths`` are padding and never read);
* ``lengths`` is ``[B]`` integers within ``[0, T]``;
* frame counts follow ``info.frame_rate``: ``lengths[b]`` for clip ``b``'s valid samples is
  within :data:`FRAME_TOLERANCE` frames of ``(seconds - info.receptive_field) x
  info.frame_rate`` (teachers differ in how they round and centre the last frame, never by
  more than that), and ``T`` is at most that many frames past what the batch's ``S`` samples
  give (a teacher may pad only to its longest clip).
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from mertlab.contracts import Targets, Teacher
from mertlab.errors import TeacherOutputError

#: How far (in frames) a teacher's frame count may be from ``duration x info.frame_rate``.
FRAME_TOLERANCE = 2


def teacher_label(teacher: Teacher) -> str:
    """``teacher 'onset_flux' (my-plugin 0.1.0)``."""
    from mertlab.plugin_system.registry import component_label

    return component_label(type(teacher), "teacher")


def expected_frames(num_samples: float, sample_rate: int, frame_rate: float, receptive_field: float = 0.0) -> float:
    """Frames ``num_samples`` samples at ``sample_rate`` give at ``frame_rate`` (not rounded),
    for frames that each read ``receptive_field`` seconds past their start."""
    return max(num_samples / sample_rate - receptive_field, 0.0) * frame_rate


def check_targets(teacher: Teacher, targets: object, num_samples: int, sample_lengths: Tensor) -> Targets:
    """Check ``teacher``'s output for a ``[B, num_samples]`` batch with ``sample_lengths`` valid
    samples per clip; return it with int64 codes / float32 features.

    Raises :class:`TeacherOutputError` naming the teacher on the first violation.
    """
    label = teacher_label(teacher)
    if not isinstance(targets, Targets):
        raise TeacherOutputError(
            f"{label}: targets() must return mertlab.contracts.Targets, got {type(targets).__name__}"
        )
    info = teacher.info
    values, lengths = targets.values, targets.lengths
    batch = int(sample_lengths.shape[0])
    frames_f = expected_frames(num_samples, teacher.sample_rate, info.frame_rate, info.receptive_field)
    shape_hint = (
        f"[batch={batch}, frames~{frames_f:.0f}, {'n_codebooks' if info.kind == 'discrete' else 'dim'}={info.dim}]"
    )
    if not isinstance(values, Tensor) or values.dim() != 3 or values.shape[0] != batch or values.shape[2] != info.dim:
        got = tuple(values.shape) if isinstance(values, Tensor) else type(values).__name__
        hint = ""
        if (
            isinstance(values, Tensor)
            and values.dim() == 3
            and values.shape[1] == info.dim
            and values.shape[2] != info.dim
        ):
            hint = " (channels-first? transpose to [B, T, C])"
        raise TeacherOutputError(f"{label}: targets.values must be {shape_hint}, got shape {got}{hint}")
    values = _checked_dtype(label, values, info.kind)
    frames = values.shape[1]
    if frames > frames_f + FRAME_TOLERANCE:
        raise TeacherOutputError(
            f"{label}: {frames} frames for {num_samples} samples at {teacher.sample_rate} Hz, but info.frame_rate "
            f"{info.frame_rate:g} Hz{_field_note(info)} gives {frames_f:.1f} (tolerance {FRAME_TOLERANCE} frames); "
            f"fix the frame count or info.frame_rate"
        )
    lengths = _checked_lengths(label, lengths, batch, frames)
    valid = _valid_frames(lengths, frames)
    for b, (n_frames, n_samples) in enumerate(zip(lengths.tolist(), sample_lengths.tolist())):
        want = expected_frames(n_samples, teacher.sample_rate, info.frame_rate, info.receptive_field)
        if abs(n_frames - want) > FRAME_TOLERANCE:
            raise TeacherOutputError(
                f"{label}: {n_frames} valid frames (targets.lengths[{b}]) for {n_samples} samples at "
                f"{teacher.sample_rate} Hz, but info.frame_rate {info.frame_rate:g} Hz{_field_note(info)} "
                f"gives {want:.1f} "
                f"(tolerance {FRAME_TOLERANCE} frames); fix the frame count or info.frame_rate"
            )
    _check_values(label, values, valid, info)
    return dataclasses.replace(targets, values=values, lengths=lengths, info=info)


def _field_note(info) -> str:
    return f" with a receptive field of {info.receptive_field:g} s" if info.receptive_field else ""


def check_cached_values(teacher: Teacher, values: Tensor, where: str) -> None:
    """Check ``[frames, C]`` targets read from the cache (``where``: the entry) like fresh ones."""
    label = teacher_label(teacher)
    info = teacher.info
    if values.dim() != 2 or values.shape[1] != info.dim:
        raise TeacherOutputError(
            f"{label}: cached targets {where} must be [frames, {info.dim}], got {tuple(values.shape)}"
        )
    values = _checked_dtype(f"{label}: cached targets {where}", values[None], info.kind)
    _check_values(f"{label}: cached targets {where}", values, torch.ones(values.shape[:2], dtype=torch.bool), info)


def _checked_dtype(label: str, values: Tensor, kind: str) -> Tensor:
    if kind == "discrete":
        if values.dtype.is_floating_point or values.dtype.is_complex or values.dtype == torch.bool:
            raise TeacherOutputError(f"{label}: discrete targets must be integer codes (int64), got {values.dtype}")
        return values.long()
    if not values.dtype.is_floating_point:
        raise TeacherOutputError(f"{label}: continuous targets must be floating point (float32), got {values.dtype}")
    return values.float()


def _checked_lengths(label: str, lengths: object, batch: int, frames: int) -> Tensor:
    if (
        not isinstance(lengths, Tensor)
        or lengths.shape != (batch,)
        or lengths.dtype.is_floating_point
        or lengths.dtype == torch.bool
    ):
        got = (
            f"{lengths.dtype} of shape {tuple(lengths.shape)}"
            if isinstance(lengths, Tensor)
            else type(lengths).__name__
        )
        raise TeacherOutputError(f"{label}: targets.lengths must be [batch={batch}] integer frame counts, got {got}")
    if bool((lengths < 0).any()) or bool((lengths > frames).any()):
        raise TeacherOutputError(f"{label}: targets.lengths {lengths.tolist()} must lie in [0, T={frames}] frames")
    return lengths.long()


def _valid_frames(lengths: Tensor, frames: int) -> Tensor:
    return torch.arange(frames, device=lengths.device)[None, :] < lengths[:, None]


def _check_values(label: str, values: Tensor, valid: Tensor, info) -> None:
    valid = valid.to(values.device)
    if info.kind == "discrete":
        for cb, vocab in enumerate(info.vocab_sizes):
            codes = values[..., cb][valid]
            if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= vocab):
                raise TeacherOutputError(
                    f"{label}: codebook {cb} codes must lie in [0, {vocab}) (info.vocab_sizes), "
                    f"got values in [{int(codes.min())}, {int(codes.max())}]"
                )
    else:
        bad = ~torch.isfinite(values[valid])
        if bool(bad.any()):
            raise TeacherOutputError(f"{label}: {int(bad.sum())} non-finite (NaN/inf) target values on valid frames")
