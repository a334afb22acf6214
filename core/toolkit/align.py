"""Aligning a teacher's frames to the backbone's frames.

Teachers and backbones disagree on frame rate (DAC 44.1 kHz: ~86.13 Hz; backbone: 75 Hz) and,
at the same rate, on frame count (a centred nnAudio CQT gives ``1 + S // hop`` frames, a codec
``ceil(S / hop)``, a conv extractor ``(S - 400) // 320 + 1``). :func:`align_targets` maps every
teacher onto the backbone's frame grid so objectives see ``values.shape[1] == num_frames``.

Convention: frame ``j`` of a stream at rate ``r`` starts at time ``j / r``; both streams start at
time 0. Backbone frame ``j`` reads source position ``p = j * r_src / r_dst``:

* discrete targets take the nearest source frame, ``round(p)`` (halves round up);
* continuous targets interpolate linearly between ``floor(p)`` and ``floor(p) + 1``.

A clip may start ``offsets[b]`` source frames into its source stream (a crop read from a
file's cached targets: the crop starts at ``start_seconds * r_src``, a fraction of a frame
past the cached frame it was sliced from); then ``p = offsets[b] + j * r_src / r_dst``.

Source indices are clamped to the clip's valid source frames, so values never come from
padding. A clip keeps ``min(frame_lengths[b], ceil((src_len - offset) * r_dst / r_src))`` valid frames: the
backbone frames that start inside the audio the teacher covered and that the backbone itself
produced. Frames past that are padding and hold zeros.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import Tensor

from mertlab.contracts import Targets
from mertlab.errors import MertlabError

# Rates are floats (44100 / 512); a mapped length a hair above an integer is that integer.
_LENGTH_TOLERANCE = 1e-6


def frame_window(start_seconds: float, seconds: float, frame_rate: float) -> tuple[int, int, float]:
    """The source frames a crop of ``seconds`` starting ``start_seconds`` into its file needs:
    ``(first, count, offset)`` -- frames ``first`` to ``first + count`` (those starting inside the
    crop) and the crop's start ``offset`` in source frames past ``first`` (for :func:`align_targets`).
    The target cache and the shards slice whole-file targets with it."""
    position = start_seconds * frame_rate
    first = math.floor(position + _LENGTH_TOLERANCE)
    offset = max(position - first, 0.0)
    count = math.ceil(offset + seconds * frame_rate - _LENGTH_TOLERANCE)
    return first, count, offset


def mapped_lengths(src_lengths: Tensor, src_rate: float, dst_rate: float) -> Tensor:
    """Frames at ``dst_rate`` that start inside ``src_lengths`` frames at ``src_rate``."""
    scaled = src_lengths.to(torch.float64) * (dst_rate / src_rate)
    return torch.ceil(scaled - _LENGTH_TOLERANCE).clamp(min=0).to(torch.long)


def align_targets(
    targets: Targets, frame_rate: float, num_frames: int, frame_lengths: Tensor, offsets: Tensor | None = None
) -> Targets:
    """Resample ``targets`` onto ``num_frames`` frames at ``frame_rate`` (see module docstring).

    ``frame_lengths``: ``[B]`` valid backbone frames per clip (``backbone.frame_lengths``).
    ``offsets``: ``[B]`` source position (in source frames, >= 0) of each clip's first backbone
    frame; None means 0 (teacher and backbone saw the same clip).
    Returns targets with ``values`` ``[B, num_frames, C]`` (same dtype), ``lengths`` ``[B]``
    and ``info.frame_rate == frame_rate``. Equal rates and frame counts give the input back.
    """
    values, src_lengths, info = targets.values, targets.lengths, targets.info
    if values.dim() != 3:
        raise MertlabError(f"targets.values must be [batch, frames, channels], got shape {tuple(values.shape)}")
    batch, src_frames, _ = values.shape
    if not (frame_rate > 0 and info.frame_rate > 0):
        raise MertlabError(f"frame rates must be positive (teacher {info.frame_rate}, backbone {frame_rate})")
    if num_frames < 0:
        raise MertlabError(f"num_frames must be >= 0, got {num_frames}")
    if src_lengths.shape != (batch,) or frame_lengths.shape != (batch,):
        raise MertlabError(
            f"lengths must be [batch={batch}]: targets.lengths {tuple(src_lengths.shape)}, "
            f"frame_lengths {tuple(frame_lengths.shape)}"
        )
    if bool((src_lengths > src_frames).any()) or bool((src_lengths < 0).any()):
        raise MertlabError(f"targets.lengths {src_lengths.tolist()} outside [0, {src_frames}] frames")
    if bool((frame_lengths > num_frames).any()) or bool((frame_lengths < 0).any()):
        raise MertlabError(f"frame_lengths {frame_lengths.tolist()} outside [0, {num_frames}] frames")
    if offsets is not None and (offsets.shape != (batch,) or bool((offsets < 0).any())):
        raise MertlabError(f"offsets must be [batch={batch}] and >= 0, got {offsets.tolist()}")

    device = values.device
    src_lengths = src_lengths.to(device)
    # float64 keeps p exact for equal rates (ratio 1.0) and for long clips.
    start = torch.zeros(batch, 1, device=device, dtype=torch.float64)
    if offsets is not None:
        start = offsets.to(device=device, dtype=torch.float64)[:, None]
    remaining = (src_lengths.to(torch.float64) - start[:, 0]).clamp(min=0)
    out_lengths = torch.minimum(frame_lengths.to(device), mapped_lengths(remaining, info.frame_rate, frame_rate))
    pos = start + torch.arange(num_frames, device=device, dtype=torch.float64)[None, :] * (info.frame_rate / frame_rate)
    last = (src_lengths - 1).clamp(min=0)[:, None]  # [B, 1] last valid source frame
    if info.kind == "discrete":
        index = torch.floor(pos + 0.5).to(torch.long)
        index = torch.minimum(index, last)
        out = _gather_frames(values, index)
    else:
        lower = torch.floor(pos)
        weight = (pos - lower).to(values.dtype)[:, :, None]
        lower = lower.to(torch.long)
        i0 = torch.minimum(lower, last)
        i1 = torch.minimum(lower + 1, last)
        out = torch.lerp(_gather_frames(values, i0), _gather_frames(values, i1), weight)
    steps = torch.arange(num_frames, device=device)
    padding = steps[None, :] >= out_lengths[:, None]
    if bool(padding.any()):
        out[padding] = 0  # out is a fresh tensor
    return Targets(values=out, lengths=out_lengths, info=dataclasses.replace(info, frame_rate=float(frame_rate)))


def _gather_frames(values: Tensor, index: Tensor) -> Tensor:
    """``values[b, index[b, j], :]`` as ``[B, J, C]``; empty sources give zeros."""
    batch, src_frames, channels = values.shape
    if src_frames == 0:
        return values.new_zeros(batch, index.shape[1], channels)
    # Whole rows by flat row index: a row copy each (index_select), several times faster than an
    # element-wise torch.gather over the channels.
    rows = index + torch.arange(batch, device=index.device)[:, None] * src_frames
    return values.reshape(batch * src_frames, channels).index_select(0, rows.reshape(-1)).view(batch, -1, channels)
