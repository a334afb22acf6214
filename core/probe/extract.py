"""Frozen clip-level features of a backbone: per layer, mean-pooled over time, for any length of audio.

MARBLE protocol (Yuan et al. 2023, "MARBLE: Music Audio Representation Benchmark"): every layer's frames are
mean-pooled per clip; long clips are cut into windows and the window means are averaged. MERT users report that long
audio "needs windowing at inference" -- here it is built in: a file is cut into consecutive
windows of ``window_seconds`` (the last one shorter), each window runs through the backbone on its
own, and the per-file feature is the mean over every valid frame of every window (= the window
means weighted by their frame counts).

Windows are batched only with windows of exactly the same length, so nothing is ever padded: with
a group-norm extractor (MERT-95M) padding would change every frame, and a clip's features would
depend on what it was batched with.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from mertlab.contracts import Backbone
from mertlab.data.audio import load_audio
from mertlab.errors import DataError, MertlabError
from mertlab.toolkit.atomic import atomic_write

FEATURES_FORMAT = "mertlab-features-v1"


class NonFiniteFeaturesError(MertlabError):
    """A backbone's features hold NaN or inf (a diverged model): probes refuse them."""


@dataclass
class FeatureSet:
    """Clip features: ``features[i, k]`` is layer ``layers[k]`` of ``paths[i]`` (``[N, K, D]`` float32).

    Layer 0 is the encoder input (after the feature projection / positional embedding), layer
    ``i`` the output of encoder layer ``i`` (see :class:`mertlab.contracts.BackboneOutput`).
    ``seconds[i]`` is the decoded length of file ``i``; ``meta`` says how they were made.
    """

    paths: list[str]
    features: np.ndarray
    layers: list[int]
    seconds: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)

    def layer(self, layer: int) -> np.ndarray:
        """``[N, D]`` features of one layer."""
        if layer not in self.layers:
            raise MertlabError(f"layer {layer} was not extracted (have {self.layers})")
        return self.features[:, self.layers.index(layer)]

    def save(self, path: str | Path) -> Path:
        """Write an ``.npz`` readable without mertlab: arrays ``paths``, ``features`` [N, K, D],
        ``layers``, ``seconds`` and ``meta`` (a JSON string). Atomic: a complete file or none
        (:func:`~mertlab.toolkit.atomic.atomic_write`)."""
        blob = self.to_bytes()
        return atomic_write(path, lambda f: f.write(blob))

    def to_bytes(self) -> bytes:
        """The ``.npz`` file :meth:`save` writes, as bytes."""
        import io
        import json

        buffer = io.BytesIO()
        np.savez(
            buffer,
            format=np.array(FEATURES_FORMAT),
            paths=np.array(self.paths, dtype=str),
            features=self.features,
            layers=np.array(self.layers, dtype=np.int64),
            seconds=self.seconds,
            meta=np.array(json.dumps(self.meta, sort_keys=True)),
        )
        return buffer.getvalue()

    @classmethod
    def load(cls, path: str | Path) -> FeatureSet:
        """Read a file written by :meth:`save`; anything else (another format, a truncated or
        damaged file, arrays that do not fit together) is one :class:`MertlabError` naming it."""
        import json

        path = Path(path)
        if not path.is_file():
            raise MertlabError(f"{path}: no such features file")
        try:
            with np.load(path, allow_pickle=False) as data:
                if str(data.get("format", "")) != FEATURES_FORMAT:
                    raise MertlabError(f"{path}: not a mertlab features file (no format '{FEATURES_FORMAT}')")
                features = cls(
                    paths=[str(p) for p in data["paths"]],
                    features=data["features"],
                    layers=[int(i) for i in data["layers"]],
                    seconds=data["seconds"],
                    meta=json.loads(str(data["meta"])),
                )
        except MertlabError:
            raise
        except Exception as exc:  # noqa: BLE001 - zipfile, zlib, numpy and json each raise their own
            raise MertlabError(f"{path}: unreadable features file ({type(exc).__name__}: {exc})") from None
        problem = features.shape_problem()
        if problem:
            raise MertlabError(f"{path}: not a valid features file ({problem})")
        return features

    def check_finite(self, what: str) -> FeatureSet:
        """``self``, or :class:`NonFiniteFeaturesError` naming ``what`` (the checkpoint...), the
        first layer with a NaN/inf feature and how many clips have one there."""
        finite = np.isfinite(self.features).all(axis=2)  # [N, K]
        if bool(finite.all()):
            return self
        k = int(np.flatnonzero(~finite.all(axis=0))[0])
        clips = np.flatnonzero(~finite[:, k])
        raise NonFiniteFeaturesError(
            f"{what}: layer {self.layers[k]} gives non-finite features (NaN or inf) for {len(clips)} of "
            f"{len(self.paths)} clips (e.g. {self.paths[clips[0]]}): a diverged model (see its run's "
            "stability/nonfinite_steps) or NaN/inf samples in that audio; nothing to probe"
        )

    def shape_problem(self) -> str | None:
        """Why the arrays do not fit together (``[N, K, D]`` features for N paths and K layers), or None."""
        n, k = len(self.paths), len(self.layers)
        if self.features.ndim != 3 or self.features.shape[:2] != (n, k):
            return f"features of shape {self.features.shape}, expected [{n}, {k}, D] for {n} paths and {k} layers"
        if self.seconds.shape != (n,):
            return f"seconds of shape {self.seconds.shape}, expected [{n}]"
        if not isinstance(self.meta, dict):
            return "meta is not a JSON object"
        return None


def window_bounds(num_samples: int, window: int, min_samples: int) -> list[tuple[int, int]]:
    """``(start, stop)`` of consecutive windows of ``window`` samples covering ``num_samples``.

    A last window shorter than ``min_samples`` (the backbone's receptive field: it would give no
    frame) is dropped, unless it is the only one -- then the clip is too short and this raises.
    """
    if num_samples < min_samples:
        raise DataError(f"{num_samples} samples is shorter than the backbone's receptive field ({min_samples} samples)")
    bounds = [(start, min(start + window, num_samples)) for start in range(0, num_samples, window)]
    return [(a, b) for a, b in bounds if b - a >= min_samples]


def resolve_layers(layers: str | Sequence[int] | None, num_layers: int) -> list[int]:
    """Layer indices from ``None``/``"all"`` (0..num_layers), ``"last"``, ``"i,j"`` or a list.

    There are ``num_layers + 1`` hidden states (0 = encoder input); negative indices count from the end.
    """
    total = num_layers + 1
    if layers is None or layers == "all":
        return list(range(total))
    if layers == "last":
        return [num_layers]
    if isinstance(layers, str):
        try:
            layers = [int(part) for part in layers.split(",") if part.strip()]
        except ValueError:
            raise MertlabError(
                f"--layers: expected all, last or comma-separated layer numbers, got {layers!r}"
            ) from None
    out: list[int] = []
    for layer in layers:
        index = layer + total if layer < 0 else layer
        if not 0 <= index < total:
            raise MertlabError(f"--layers: layer {layer} does not exist (the backbone has layers 0..{num_layers})")
        if index not in out:
            out.append(index)
    if not out:
        raise MertlabError("--layers: no layer given")
    return sorted(out)


class _DecodedFiles(Dataset):
    """Decodes (and resamples) one file per item, so a DataLoader can decode in worker processes."""

    def __init__(self, paths: Sequence[str | Path], sample_rate: int) -> None:
        self.paths = list(paths)
        self.sample_rate = sample_rate

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor]:
        return index, load_audio(self.paths[index], self.sample_rate)


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``auto``/None: CUDA when available, else CPU; anything else as given."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@torch.no_grad()
def extract_features(
    backbone: Backbone,
    paths: Iterable[str | Path],
    window_seconds: float = 5.0,
    layers: str | Sequence[int] | None = None,
    batch_size: int = 8,
    device: str | torch.device | None = "auto",
    num_workers: int = 0,
    progress: bool = True,
) -> FeatureSet:
    """Mean-pooled features of every file in ``paths`` (see the module docstring).

    Each file is decoded to mono at ``backbone.sample_rate``, cut into windows of
    ``window_seconds`` (MERT's 5 s training crops by default), and run in eval mode without
    gradients, up to ``batch_size`` equal-length windows at a time. Returns ``[N, K, D]`` for
    the ``K`` requested ``layers`` (default: all ``num_layers + 1``).
    """
    if window_seconds <= 0:
        raise MertlabError(f"--window-seconds must be > 0, got {window_seconds}")
    if batch_size < 1:
        raise MertlabError(f"--batch-size must be >= 1, got {batch_size}")
    files = [str(p) for p in paths]
    if not files:
        raise DataError("no audio files to extract features from")
    keep = resolve_layers(layers, backbone.num_layers)
    rate = backbone.sample_rate
    window = max(1, int(round(window_seconds * rate)))
    min_samples = backbone.min_samples
    if min_samples > window:
        raise MertlabError(f"--window-seconds {window_seconds} is shorter than the backbone's receptive field")
    device = resolve_device(device)
    was_training = backbone.training
    backbone.eval().to(device)

    sums: np.ndarray | None = None  # [N, K, D] float64: sum of frame features per file
    frames = np.zeros(len(files), dtype=np.float64)
    seconds = np.zeros(len(files), dtype=np.float64)
    pending: dict[int, list[tuple[int, torch.Tensor]]] = {}  # window length -> (file, window)
    pending_count = 0

    def flush(length: int) -> None:
        nonlocal sums, pending_count
        items = pending.pop(length)
        pending_count -= len(items)
        wav = torch.stack([w for _, w in items]).to(device)
        out = backbone(wav)
        # No padding inside a batch; still honour the padding mask a backbone may return.
        valid = (~out.padding_mask).to(torch.float64)  # [B, T]
        stacked = torch.stack([out.hidden_states[k] for k in keep], dim=1).to(torch.float64)  # [B, K, T, D]
        pooled = torch.einsum("bktd,bt->bkd", stacked, valid).cpu().numpy()
        counts = valid.sum(dim=1).cpu().numpy()
        if sums is None:
            sums = np.zeros((len(files), len(keep), pooled.shape[-1]), dtype=np.float64)
        for row, (file_index, _) in enumerate(items):
            sums[file_index] += pooled[row]
            frames[file_index] += counts[row]

    loader = DataLoader(_DecodedFiles(files, rate), batch_size=None, num_workers=num_workers)
    try:
        for file_index, wav in tqdm(loader, total=len(files), desc="extracting", unit="file", disable=not progress):
            seconds[file_index] = wav.shape[0] / rate
            try:
                bounds = window_bounds(wav.shape[0], window, min_samples)
            except DataError as exc:
                raise DataError(f"{files[file_index]}: {exc}") from None
            for start, stop in bounds:
                pending.setdefault(stop - start, []).append((file_index, wav[start:stop]))
                pending_count += 1
                if len(pending[stop - start]) >= batch_size:
                    flush(stop - start)
            # Odd-length last windows wait for company; bound the memory they hold.
            if pending_count >= 4 * batch_size:
                for length in sorted(pending, key=lambda n: -len(pending[n])):
                    flush(length)
        for length in list(pending):
            flush(length)
    finally:
        backbone.train(was_training)
    assert sums is not None
    empty = [files[i] for i in np.flatnonzero(frames == 0)]
    if empty:
        raise DataError(f"{empty[0]}: the backbone produced no frames for this file")
    features = (sums / frames[:, None, None]).astype(np.float32)
    meta = {
        "window_seconds": window_seconds,
        "sample_rate": rate,
        "frame_rate": backbone.frame_rate,
        "backbone": backbone.name,
        "num_layers": backbone.num_layers,
    }
    return FeatureSet(paths=files, features=features, layers=keep, seconds=seconds, meta=meta)
