"""Handcrafted clip features that learned features must beat (``--baselines mfcc,chroma,cqt``).

Each baseline is a fixed signal-processing feature, mean-pooled over the clip (MFCC also its
standard deviation), probed with exactly the MLP protocol and splits of the backbone's layers:

* ``mfcc``   -- mean and std of 20 MFCCs (128 mel bands, log(mel + 1e-6)), :mod:`mertlab.toolkit.frame_features`;
* ``chroma`` -- mean 12-bin chroma (STFT power folded onto pitch classes, each frame max-normalised);
* ``cqt``    -- mean log-magnitude constant-Q transform, 7 octaves from C1 at 12 bins per octave
  (the ``cqt`` teacher's nnAudio transform).

All run at 24 kHz (MERT's rate) with a hop of 512 samples, window by window like the backbone
(:mod:`.frames`). These are the classic MIR feature baselines, e.g. of the MARBLE benchmark
(Yuan et al., 2023) and of Choi et al., "Transfer learning for music classification" (2017).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from mertlab.experiment.spec import parse_baselines
from mertlab.plugin_system.registry import get_registry
from mertlab.probe.extract import FeatureSet
from mertlab.probe.frames import pooled_frames
from mertlab.toolkit.frame_features import LogMelChroma, MFCCDeltas

if TYPE_CHECKING:  # the audio stack (torchaudio) loads on use: `mertlab validate` checks baseline names only
    from mertlab.probe.extract import FeatureSet
    from mertlab.probe.frames import FrameFn

SAMPLE_RATE = 24000
HOP = 512


def _mfcc() -> FrameFn:
    n_mfcc = 20
    feature = MFCCDeltas(SAMPLE_RATE, n_fft=2048, hop_length=HOP, n_mels=128, n_mfcc=n_mfcc).eval()
    return lambda wav: feature(wav[None], _length(wav))[0][0, :, :n_mfcc]  # static coefficients only


def _chroma() -> FrameFn:
    n_mels = 8  # the log-mel half is discarded; the STFT is shared
    feature = LogMelChroma(SAMPLE_RATE, n_fft=4096, hop_length=HOP, n_mels=n_mels).eval()
    return lambda wav: feature(wav[None], _length(wav))[0][0, :, n_mels:]


def _cqt() -> FrameFn:
    params = {
        "sample_rate": SAMPLE_RATE,
        "hop_length": HOP,
        "fmin": 32.7,
        "n_bins": 84,
        "bins_per_octave": 12,
        "magnitude": "log",
        "normalize": "none",
    }
    teacher = get_registry().build("teacher", "cqt", params).eval()

    def frames(wav: Tensor) -> Tensor:
        targets = teacher.targets(wav[None], _length(wav))
        return targets.values[0, : int(targets.lengths[0])]

    return frames


def _length(wav: Tensor) -> Tensor:
    return torch.tensor([wav.shape[0]])


@dataclass(frozen=True)
class Baseline:
    """A handcrafted clip feature: ``make()`` builds its frame function; ``with_std`` adds the
    per-dimension std to the mean; ``settings`` identify it in the feature cache."""

    name: str
    summary: str
    make: Callable[[], FrameFn]
    with_std: bool = False
    settings: dict[str, Any] = field(default_factory=dict)


BASELINES: dict[str, Baseline] = {
    b.name: b
    for b in (
        Baseline(
            "mfcc",
            "mean + std of 20 MFCCs",
            _mfcc,
            with_std=True,
            settings={"n_mfcc": 20, "n_mels": 128, "n_fft": 2048},
        ),
        Baseline("chroma", "mean 12-bin chroma", _chroma, settings={"n_fft": 4096}),
        Baseline(
            "cqt", "mean log-CQT, 84 bins (C1-B7)", _cqt, settings={"fmin": 32.7, "n_bins": 84, "bins_per_octave": 12}
        ),
    )
}


def cache_identity(name: str) -> dict[str, Any]:
    """What the features of baseline ``name`` depend on besides the audio and the window."""
    baseline = BASELINES[name]
    return {
        "kind": "baseline",
        "name": name,
        "sample_rate": SAMPLE_RATE,
        "hop": HOP,
        "with_std": baseline.with_std,
        **baseline.settings,
    }


def baseline_features(
    name: str, paths: Sequence[str], window_seconds: float = 5.0, progress: bool = True
) -> FeatureSet:
    """Clip features ``[N, 1, D]`` of baseline ``name`` (one pseudo-layer 0) for ``paths``."""
    baseline = BASELINES[parse_baselines([name])[0]]

    pooled = pooled_frames(
        baseline.make(), list(paths), SAMPLE_RATE, window_seconds, baseline.with_std, progress, desc=f"baseline {name}"
    )
    meta = {"baseline": name, "window_seconds": window_seconds, "sample_rate": SAMPLE_RATE}
    return FeatureSet(
        paths=[str(p) for p in paths], features=pooled[:, None, :], layers=[0], seconds=np.zeros(len(pooled)), meta=meta
    )
