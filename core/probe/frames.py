"""Frame-level features of whole files, window by window, and their clip-level pooling.

Shared by the handcrafted probe baselines (:mod:`.baselines`) and the teacher evaluation
(:mod:`mertlab.teachers.evaluation`): a *frame function* maps one mono window ``[S]`` to frames
``[T, D]``; every file is decoded at the function's sample rate, cut into windows of
``window_seconds`` (as :func:`mertlab.probe.extract.extract_features` does for backbones) and each
window runs on its own, so nothing depends on padding or on the other files.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader
from tqdm import tqdm

from mertlab.errors import DataError, MertlabError
from mertlab.probe.extract import _DecodedFiles, window_bounds

#: One mono window ``[S]`` at the function's sample rate -> frames ``[T, D]``.
FrameFn = Callable[[Tensor], Tensor]


def iter_file_frames(
    frame_fn: FrameFn,
    paths: Sequence[str],
    sample_rate: int,
    window_seconds: float,
    progress: bool = True,
    desc: str = "frames",
) -> Iterator[tuple[int, Tensor]]:
    """``(file index, frames [T, D])`` of every file in order, the frames of all its windows
    concatenated (a file too short for one frame raises :class:`DataError` naming it)."""
    if window_seconds <= 0:
        raise MertlabError(f"window_seconds must be > 0, got {window_seconds}")
    window = max(1, int(round(window_seconds * sample_rate)))
    loader = DataLoader(_DecodedFiles(list(paths), sample_rate), batch_size=None)
    for index, wav in tqdm(loader, total=len(paths), desc=desc, unit="file", disable=not progress):
        try:
            with torch.no_grad():
                pieces = [frame_fn(wav[a:b]) for a, b in window_bounds(wav.shape[0], window, 1)]
        except DataError as exc:
            raise DataError(f"{paths[index]}: {exc}") from None
        frames = torch.cat(pieces)
        if frames.shape[0] == 0:
            raise DataError(f"{paths[index]}: no frames")
        yield index, frames


def pooled_frames(
    frame_fn: FrameFn,
    paths: Sequence[str],
    sample_rate: int,
    window_seconds: float,
    with_std: bool = False,
    progress: bool = True,
    desc: str = "frames",
) -> np.ndarray:
    """``[N, D]`` mean over every frame of each file (``[N, 2D]`` mean then std with ``with_std``)."""
    rows = []
    for _, frames in iter_file_frames(frame_fn, paths, sample_rate, window_seconds, progress, desc):
        frames = frames.double()
        stats = [frames.mean(dim=0)]
        if with_std:
            stats.append(frames.std(dim=0, unbiased=False))
        rows.append(torch.cat(stats).cpu().numpy())
    return np.stack(rows).astype(np.float32)
