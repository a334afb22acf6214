"""Shared plumbing of the neural-codec teachers (``encodec``, ``dac``).

Both teachers wrap a real RVQ-VAE codec and need the same few things, kept here so the
plugins stay independent of each other:

* :func:`resolve_weights` -- the local weights file to load (explicit path or the codec
  package's own cache location), with one clear error when it is absent (nothing is ever
  downloaded);
* :func:`state_hash` -- a hash of the weights that produce the codes, mixed into the
  teacher's fingerprint so the target cache notices changed weights;
* :func:`check_audio_batch` / :func:`encode_by_length` -- input checks and exact batching:
  codec encoders pad the end of a clip (to a whole frame, or through their convolutions), so
  a clip padded inside a batch would get different last frames than the same clip alone.
  Clips are therefore encoded in groups of equal length, each cropped to its valid samples;
* :func:`calibration_audio` / :func:`fit_codebook` -- a randomly initialised codec has useless
  codebooks (EnCodec's are all zeros until its k-means init sees data), so a teacher built
  with ``pretrained: false`` fits each residual codebook with a seeded k-means on the encoder
  output of synthetic audio (tones and noise at random levels) generated from the teacher's
  seed. The result depends only on the params, never on which batch came first, so cached
  and on-the-fly targets agree.
"""
from __future__ import annotations

import hashlib
import math
import warnings
from collections.abc import Callable, Iterator, Mapping
from typing import Any
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import Tensor

from mertlab.errors import DataError, MertlabError, WeightsError


# --------------------------------------------------------------------------- weights
def resolve_weights(teacher: str, explicit: str | None, default: Path, url: str) -> Path:
    """The weights file to load: ``explicit`` if given, else ``default`` (the cache location
    the codec package itself uses). Raises :class:`WeightsError` saying where to put the file
    when it does not exist."""
    if explicit is not None:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise WeightsError(
                f"{teacher} teacher: weights file {path} (params.weights) does not exist; "
                f"point params.weights to a local copy of {url}, or set pretrained: false for random weights"
            )
        return path
    if not default.is_file():
        raise WeightsError(
            f"{teacher} teacher: pretrained weights not found at {default} (nothing is downloaded); "
            f"put a copy of {url} there, or set params.weights to a local copy, "
            f"or set pretrained: false for random weights"
        )
    return default


def load_error(teacher: str, path: Path, exc: Exception) -> WeightsError:
    """A one-line :class:`WeightsError` for a weights file the real loader rejected."""
    detail = " ".join(str(exc).split())
    if len(detail) > 400:
        detail = detail[:400] + " ..."
    return WeightsError(f"{teacher} teacher: cannot load weights file {path}: {type(exc).__name__}: {detail}")


def read_weights(teacher: str, path: Path) -> Any:
    """The contents of a torch weights file, loaded with ``weights_only=True``
    (:func:`mertlab.safe_load.load_torch_file`): a file that could run code is refused."""
    from mertlab.safe_load import load_torch_file

    try:
        return load_torch_file(path, "weights file")
    except MertlabError as exc:
        raise WeightsError(f"{teacher} teacher: {exc}") from None


def state_hash(state: Mapping[str, Tensor]) -> str:
    """SHA-256 (16 hex digits) over names, dtypes, shapes and bytes of ``state`` tensors."""
    digest = hashlib.sha256()
    for key in sorted(state):
        tensor = state[key].detach().cpu().contiguous()
        digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


@contextmanager
def seeded_build(seed: int) -> Iterator[None]:
    """Build a codec inside this block: its random initialisation follows ``seed`` without
    disturbing the global RNG, and the codec packages' ``weight_norm`` deprecation warning
    (raised once per layer, not actionable for users) is silenced."""
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*weight_norm.* is deprecated", category=FutureWarning)
        torch.manual_seed(seed)
        yield


# --------------------------------------------------------------------------- batches
def check_audio_batch(teacher: str, wav: Tensor, lengths: Tensor) -> list[int]:
    """Validate a ``[B, S]`` float batch and its ``[B]`` valid lengths; return the lengths.

    Every clip needs at least one valid sample and finite values where valid (a codec would
    silently turn NaN into arbitrary codes)."""
    if wav.dim() != 2 or not wav.is_floating_point():
        raise DataError(
            f"{teacher} teacher expects float mono audio [batch, samples]; got {tuple(wav.shape)} {wav.dtype}"
        )
    if lengths.shape != (wav.shape[0],):
        raise DataError(
            f"{teacher} teacher: lengths must be [batch] = [{wav.shape[0]}]; got {tuple(lengths.shape)}"
        )
    if lengths.is_floating_point() and not torch.equal(lengths, lengths.round()):
        raise DataError(f"{teacher} teacher: lengths must be whole numbers of samples; got {lengths.tolist()}")
    lens = [int(n) for n in lengths.tolist()]
    for i, n in enumerate(lens):
        if not 1 <= n <= wav.shape[1]:
            raise DataError(
                f"{teacher} teacher: clip {i} has {n} valid samples; expected 1..{wav.shape[1]} "
                "(empty clips cannot be encoded)"
            )
    valid = torch.arange(wav.shape[1], device=wav.device)[None, :] < lengths.to(wav.device)[:, None]
    if not bool(torch.isfinite(wav[valid]).all()):
        raise DataError(f"{teacher} teacher: audio contains NaN or infinite samples")
    return lens


def encode_by_length(
    wav: Tensor, lens: list[int], encode: Callable[[Tensor], Tensor]
) -> tuple[Tensor, Tensor]:
    """Run ``encode`` (``[b, n]`` audio -> ``[b, T, K]`` int codes) on groups of clips of equal
    valid length ``n``, each cropped to ``n``, and gather the codes into ``[B, T_max, K]`` with
    their frame counts ``[B]``. Frames past a clip's count are 0 (padding).

    A batch whose clips all have the same length (the usual training crop) is one call."""
    groups: dict[int, list[int]] = {}
    for i, n in enumerate(lens):
        groups.setdefault(n, []).append(i)
    encoded = {n: encode(wav[torch.tensor(idx, device=wav.device), :n]) for n, idx in groups.items()}
    some = next(iter(encoded.values()))
    max_frames = max(codes.shape[1] for codes in encoded.values())
    values = torch.zeros(len(lens), max_frames, some.shape[2], dtype=torch.int64, device=wav.device)
    frames = torch.zeros(len(lens), dtype=torch.int64, device=wav.device)
    for n, idx in groups.items():
        codes = encoded[n]
        index = torch.tensor(idx, device=wav.device)
        values[index, : codes.shape[1]] = codes.to(device=wav.device, dtype=torch.int64)
        frames[index] = codes.shape[1]
    return values, frames


# --------------------------------------------------------------------------- random-init codebooks
def calibration_audio(sample_rate: int, seconds: float, generator: torch.Generator, clip_seconds: float = 1.0) -> Tensor:
    """Seeded synthetic audio ``[n_clips, clip_samples]`` (about ``seconds`` in total): each clip
    mixes 1-4 sines (log-uniform 40 Hz .. 0.45 * sample rate) and white noise, at random levels
    spanning ~50 dB, under a random piecewise-linear envelope. Only used to give a randomly
    initialised quantizer codebooks that match what its encoder outputs."""
    clip = max(1, round(clip_seconds * sample_rate))
    n_clips = max(1, math.ceil(seconds / clip_seconds))
    t = torch.arange(clip, dtype=torch.float64) / sample_rate
    lo, hi = math.log(40.0), math.log(0.45 * sample_rate)
    clips = []
    for _ in range(n_clips):
        n_tones = int(torch.randint(1, 5, (1,), generator=generator))
        freqs = torch.exp(lo + (hi - lo) * torch.rand(n_tones, generator=generator, dtype=torch.float64))
        phases = 2 * math.pi * torch.rand(n_tones, generator=generator, dtype=torch.float64)
        gains = torch.rand(n_tones, generator=generator, dtype=torch.float64)
        tones = (gains[:, None] * torch.sin(2 * math.pi * freqs[:, None] * t[None] + phases[:, None])).sum(0)
        noise = torch.randn(clip, generator=generator, dtype=torch.float64) * 10 ** (-3 * torch.rand(1, generator=generator, dtype=torch.float64))
        knots = torch.rand(5, generator=generator, dtype=torch.float64)
        envelope = torch.nn.functional.interpolate(knots[None, None], size=clip, mode="linear", align_corners=True)[0, 0]
        level = 10 ** (-2.5 * torch.rand(1, generator=generator, dtype=torch.float64))
        mix = tones / n_tones + noise
        clips.append(level * envelope * mix / mix.abs().max().clamp_min(1e-12))
    return torch.stack(clips).to(torch.float32)


#: Samples per fitted centroid at least: with one centroid per sample, a residual codebook would
#: quantize its calibration frames exactly and leave the next codebooks nothing but zeros.
SAMPLES_PER_CODE = 4


def fit_codebook(samples: Tensor, size: int, iters: int, generator: torch.Generator, spherical: bool = False) -> Tensor:
    """A ``[size, D]`` codebook from ``samples`` ``[N, D]``: k-means with
    ``min(size, ceil(N / SAMPLES_PER_CODE))`` centroids, repeated to fill ``size`` rows when there
    are fewer (nearest-code lookups return the first of equal rows, so repeats stay unused)."""
    fitted = kmeans(samples, min(size, -(-samples.shape[0] // SAMPLES_PER_CODE)), iters, generator, spherical)
    return fitted.repeat(-(-size // fitted.shape[0]), 1)[:size]


def kmeans(samples: Tensor, k: int, iters: int, generator: torch.Generator, spherical: bool = False) -> Tensor:
    """Lloyd's k-means of ``samples`` ``[N, D]`` (``N >= k``) into ``k`` centroids ``[k, D]``,
    seeded by ``generator`` (initial centroids: ``k`` distinct random samples).

    ``spherical``: cluster directions (samples and centroids L2-normalised, cosine nearest), as
    DAC's codebook lookup does."""
    samples = samples.detach().float().cpu()
    if spherical:
        samples = torch.nn.functional.normalize(samples, dim=1)
    if not 1 <= k <= samples.shape[0]:
        raise ValueError(f"k-means needs 1 <= k <= number of samples; got k={k}, {samples.shape[0]} samples")
    centroids = samples[torch.randperm(samples.shape[0], generator=generator)[:k]].clone()
    for _ in range(iters):
        assign = nearest(samples, centroids, spherical)
        counts = torch.bincount(assign, minlength=k)
        sums = torch.zeros_like(centroids).index_add_(0, assign, samples)
        filled = counts > 0  # empty clusters keep their centroid
        centroids[filled] = sums[filled] / counts[filled, None].float()
        if spherical:
            centroids = torch.nn.functional.normalize(centroids, dim=1)
    return centroids


def nearest(samples: Tensor, centroids: Tensor, spherical: bool = False) -> Tensor:
    """Index of the nearest centroid per sample (Euclidean, or cosine when ``spherical``)."""
    if spherical:
        return (samples @ centroids.T).argmax(dim=1)
    dist = samples.pow(2).sum(1, keepdim=True) - 2 * samples @ centroids.T + centroids.pow(2).sum(1)[None]
    return dist.argmin(dim=1)

