"""The conv feature extractor's ops on channels-last ``[B, T, C]`` activations, as plain GEMMs (CPU).

Why: a strided ``nn.Conv1d`` on CPU (oneDNN) wants channels-last memory for its backward pass and
gets ``[B, C, T]``, so every layer's backward first transposes its output gradient
(``aten::contiguous`` inside ``convolution_backward``) -- a 512 x 24000 transpose per clip for the
first layer of HuBERT's extractor on 5 s, 18% of a ``small`` train step (torch.profiler; Hugging
Face's ``HubertModel`` pays it too). Kept channels-last from the waveform on, a stride-``s``
convolution needs no copy at all: output frame ``t`` reads input frames ``s*t + j`` for taps
``j < k``, and for ``m <= s`` consecutive taps these are ``m * C`` consecutive numbers starting at
row ``s*t``, so each group of ``s`` taps is one GEMM over a strided view of the input (row stride
``s * C`` >= its width, a valid BLAS matrix). The backward pass is GEMMs into the same views.
The results equal ``nn.Conv1d``'s up to float summation order (``tests/test_backbone_transformer.py``).

:class:`ChannelsLastConv` is the convolution, :class:`ChannelTimeNorm` HuBERT's first-layer
``GroupNorm(C, C)`` (each channel normalised over time) in the same layout.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor


def _tap_groups(kernel: int, stride: int) -> list[tuple[int, int]]:
    """Taps ``[j0, j1)`` read by one GEMM: at most ``stride`` consecutive taps each."""
    return [(j, min(j + stride, kernel)) for j in range(0, kernel, stride)]


def _taps(clip: Tensor, frames: int, stride: int, j0: int, j1: int) -> Tensor:
    """``[frames, (j1 - j0) * C]`` view of a contiguous ``[T, C]`` clip: row ``t`` holds input
    frames ``stride * t + j0`` to ``stride * t + j1 - 1``."""
    channels = clip.shape[-1]
    return clip.as_strided(
        (frames, (j1 - j0) * channels), (stride * channels, 1), clip.storage_offset() + j0 * channels
    )


def _tap_weight(weight: Tensor, j0: int, j1: int) -> Tensor:
    """``[O, C, k]`` conv weight -> ``[O, (j1 - j0) * C]``, columns ordered (tap, channel) as
    :func:`_taps` (a copy transposing only within each output channel's row: cache friendly)."""
    out_channels, in_channels, _ = weight.shape
    return weight[:, :, j0:j1].transpose(1, 2).reshape(out_channels, (j1 - j0) * in_channels)


class ChannelsLastConv(torch.autograd.Function):
    """``nn.Conv1d`` (no padding, dilation 1, one group) on ``[B, T, C]`` input, giving ``[B, T', O]``."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, bias: Tensor | None, stride: int) -> Tensor:
        x = x.contiguous()
        batch, length, _ = x.shape
        out_channels, _, kernel = weight.shape
        frames = (length - kernel) // stride + 1
        out = x.new_empty(batch, frames, out_channels)
        groups = _tap_groups(kernel, stride)
        weights = [_tap_weight(weight, j0, j1).t() for j0, j1 in groups]
        for b in range(batch):
            for g, ((j0, j1), w) in enumerate(zip(groups, weights, strict=True)):
                taps = _taps(x[b], frames, stride, j0, j1)
                if g > 0:
                    out[b].addmm_(taps, w)
                elif bias is None:
                    torch.mm(taps, w, out=out[b])
                else:
                    torch.addmm(bias, taps, w, out=out[b])
        ctx.save_for_backward(x, weight)
        ctx.stride, ctx.has_bias = stride, bias is not None
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        stride = ctx.stride
        grad = grad.contiguous()
        batch, length, in_channels = x.shape
        out_channels, _, kernel = weight.shape
        frames = grad.shape[1]
        groups = _tap_groups(kernel, stride)
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[1]:
            by_tap = weight.new_empty(out_channels, kernel * in_channels)  # columns (tap, channel)
            for j0, j1 in groups:
                columns = by_tap[:, j0 * in_channels : j1 * in_channels]
                for b in range(batch):
                    taps = _taps(x[b], frames, stride, j0, j1)
                    if b == 0:
                        torch.mm(grad[b].t(), taps, out=columns)
                    else:
                        columns.addmm_(grad[b].t(), taps)
            grad_w = by_tap.view(out_channels, kernel, in_channels).transpose(1, 2).contiguous()
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad.sum((0, 1))
        if ctx.needs_input_grad[0]:
            # The first tap group covers frames [0, stride * frames) exactly when it has `stride`
            # taps: it writes them, and only the frames past it need zeros.
            first_writes = groups[0][1] - groups[0][0] == stride
            grad_x = torch.empty_like(x) if first_writes else torch.zeros_like(x)
            if first_writes:
                grad_x[:, stride * frames :] = 0
            for g, (j0, j1) in enumerate(groups):
                w = _tap_weight(weight, j0, j1)
                for b in range(batch):
                    view = _taps(grad_x[b], frames, stride, j0, j1)
                    if g == 0 and first_writes:
                        torch.mm(grad[b], w, out=view)
                    else:
                        view.addmm_(grad[b], w)
        return grad_x, grad_w, grad_b, None


def channels_last_conv(x: Tensor, weight: Tensor, bias: Tensor | None, stride: int) -> Tensor:
    """:class:`ChannelsLastConv` under CPU autocast too (it runs in the autocast dtype)."""
    if torch.is_autocast_enabled("cpu"):
        dtype = torch.get_autocast_dtype("cpu")
        x, weight = x.to(dtype), weight.to(dtype)
        bias = bias.to(dtype) if bias is not None else None
    with torch.autocast("cpu", enabled=False):
        return ChannelsLastConv.apply(x, weight, bias, stride)


#: Frames of ``[B, T, C]`` processed at a time by the chunked loops below (a cache-sized piece).
_CHUNK_FRAMES = 256


def _frame_chunks(length: int) -> list[slice]:
    """Consecutive slices of :data:`_CHUNK_FRAMES` frames covering ``length``."""
    return [slice(start, min(start + _CHUNK_FRAMES, length)) for start in range(0, length, _CHUNK_FRAMES)]


def _chunk_buffer(x: Tensor) -> Tensor:
    """A flat buffer holding one chunk of ``[B, T, C]`` ``x`` (see :func:`_contiguous_part`)."""
    batch, length, channels = x.shape
    return x.new_empty(batch * min(_CHUNK_FRAMES, length) * channels)


def _contiguous_part(flat: Tensor, like: Tensor, t: slice) -> Tensor:
    """A contiguous ``[B, len(t), C]`` tensor on the storage of the 1-D buffer ``flat``. (torch
    2.9's CPU GELU writes wrongly into a strided ``out=`` view, so GELU ops only see these.)"""
    batch, _, channels = like.shape
    return flat[: batch * (t.stop - t.start) * channels].view(batch, t.stop - t.start, channels)


def _time_sum(x: Tensor, term: Callable[[Tensor, slice], object]) -> Tensor:
    """``sum_t term`` over the frames of ``[B, T, C]`` ``x`` as ``[B, 1, C]``; ``term(out, frames)``
    writes the term of ``frames`` into ``out``, a cache-sized buffer (``torch.var_mean`` over a
    non-innermost dim, or a whole-tensor product, is 10-30x slower on CPU)."""
    total = x.new_zeros(x.shape[0], 1, x.shape[2])
    buffer = _chunk_buffer(x)
    for t in _frame_chunks(x.shape[1]):
        part = _contiguous_part(buffer, x, t)
        term(part, t)
        total += part.sum(1, keepdim=True)
    return total


def _sum_of_squares(x: Tensor, mean: Tensor) -> Tensor:
    """``sum_t (x - mean)^2`` (two-pass variance: no cancellation)."""
    return _time_sum(x, lambda out, t: torch.sub(x[:, t], mean, out=out).square_())


def _sum_of_products(a: Tensor, b: Tensor) -> Tensor:
    """``sum_t a * b``."""
    return _time_sum(a, lambda out, t: torch.mul(a[:, t], b[:, t], out=out))


class ChannelTimeNorm(torch.autograd.Function):
    """``GroupNorm(C, C)`` of ``[B, T, C]``: each (clip, channel) normalised over time, then scaled
    by ``weight`` and shifted by ``bias`` (both ``[C]``); with ``gelu``, followed by the exact GELU
    in the same pass (HuBERT's first extractor layer): the normalised values are made and used
    chunk by chunk in cache and recomputed in the backward pass instead of being stored."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, bias: Tensor, eps: float, gelu: bool) -> Tensor:
        length = x.shape[1]
        mean = x.sum(1, keepdim=True) / length  # [B, 1, C]
        var = _sum_of_squares(x, mean) / length
        rstd = (var + eps).rsqrt()
        scale = rstd * weight
        shift = bias - mean * scale
        ctx.save_for_backward(x, mean, rstd, weight, shift)
        ctx.gelu = gelu
        if not gelu:
            return torch.addcmul(shift, x, scale)
        out = torch.empty_like(x)
        buffer = _chunk_buffer(x)
        for t in _frame_chunks(length):
            part = torch.addcmul(shift, x[:, t], scale, out=_contiguous_part(buffer, x, t))
            out[:, t] = torch.ops.aten.gelu_(part)
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        x, mean, rstd, weight, shift = ctx.saved_tensors
        length = x.shape[1]
        if ctx.gelu:  # gradient at the GELU's input, and its two sums over time, chunk by chunk
            scale = rstd * weight
            grad_norm = torch.empty_like(x)
            buffers = [_chunk_buffer(x) for _ in range(2)]
            sum_grad = x.new_zeros(mean.shape)
            sum_grad_x = x.new_zeros(mean.shape)
            for t in _frame_chunks(length):
                first, second = (_contiguous_part(b, x, t) for b in buffers)
                normalised = torch.addcmul(shift, x[:, t], scale, out=first)
                g = torch.ops.aten.gelu_backward.grad_input(grad[:, t], normalised, grad_input=second)
                grad_norm[:, t] = g
                sum_grad += g.sum(1, keepdim=True)
                sum_grad_x += torch.mul(g, x[:, t], out=first).sum(1, keepdim=True)
        else:
            grad_norm = grad
            sum_grad = grad.sum(1, keepdim=True)
            sum_grad_x = _sum_of_products(grad, x)
        sum_grad_xhat = (sum_grad_x - mean * sum_grad) * rstd  # sum over t of grad * xhat
        grad_x = None
        if ctx.needs_input_grad[0]:
            # dx = w * rstd * (g - mean_t(g) - xhat * mean_t(g * xhat)) = a * g + c * x + d per (clip, channel)
            a = weight * rstd
            c = -a * rstd * sum_grad_xhat / length
            d = -a * sum_grad / length - c * mean
            if ctx.gelu:  # in place, in cache-sized pieces: grad_norm is this function's own buffer
                for t in _frame_chunks(length):
                    grad_norm[:, t].mul_(a).add_(d).addcmul_(x[:, t], c)
                grad_x = grad_norm
            else:
                grad_x = torch.addcmul(d, grad, a).addcmul_(x, c)
        grad_w = sum_grad_xhat.sum((0, 1)) if ctx.needs_input_grad[1] else None
        grad_b = sum_grad.sum((0, 1)) if ctx.needs_input_grad[2] else None
        return grad_x, grad_w, grad_b, None, None


def channel_time_norm(x: Tensor, weight: Tensor, bias: Tensor, eps: float, gelu: bool = False) -> Tensor:
    """:class:`ChannelTimeNorm` (``gelu``: then the exact GELU) in at least float32 (GroupNorm
    runs in float32 under autocast too)."""
    dtype = torch.promote_types(x.dtype, torch.float32)
    with torch.autocast("cpu", enabled=False):
        return ChannelTimeNorm.apply(x.to(dtype), weight.to(dtype), bias.to(dtype), eps, gelu)
