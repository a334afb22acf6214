"""Shared plumbing of the neural-codec teachers (``encodec``, ``dac``).

Both teachers wrap a real RVQ-VAE codec and need the same few things, kept here so the
plugins stay independent of each other:

* :class:`CodecTeacher` -- the teacher itself, but for building the codec, fitting its random
  codebooks and encoding: a frozen ``model``, ``ceil(n / hop)`` frames per clip, checked input
  (:func:`mertlab.toolkit.frame_features.check_audio_batch`), a fingerprint over the codec's weights;
* :func:`resolve_weights` -- the local weights file to load (explicit path or the codec
  package's own cache location), with one clear error when it is absent (nothing is ever
  downloaded);
* :func:`state_hash` -- a hash of the weights that produce the codes, mixed into the
  teacher's fingerprint so the target cache notices changed weights;
* :func:`encode_by_length` -- exact batching: codec encoders pad the end of a clip (to a whole
  frame, or through their convolutions), so a clip padded inside a batch would get different
  last frames than the same clip alone. Clips are therefore encoded in groups of equal length,
  each cropped to its valid samples;
* :func:`calibration_audio` / :func:`fit_codebook` -- a randomly initialised codec has useless
  codebooks (EnCodec's are all zeros until its k-means init sees data), so a teacher built
  with ``pretrained: false`` fits each residual codebook with a seeded k-means
  (:func:`mertlab.toolkit.kmeans.lloyd_kmeans`) on the encoder output of synthetic audio (tones and
  noise at random levels) generated from the teacher's seed. The result depends only on the
  params, never on which batch came first, so cached and on-the-fly targets agree.
"""

from __future__ import annotations

import hashlib
import math
import warnings
from abc import abstractmethod
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from pydantic import Field
from torch import Tensor, nn

from mertlab.contracts import TargetInfo
from mertlab.errors import MertlabError, WeightsError
from mertlab.toolkit.frame_features import CheckedFrameTeacher
from mertlab.toolkit.kmeans import lloyd_kmeans
from mertlab.toolkit.safe_load import load_torch_file


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
    (:func:`mertlab.toolkit.safe_load.load_torch_file`): a file that could run code is refused."""

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
def encode_by_length(wav: Tensor, lens: list[int], encode: Callable[[Tensor], Tensor]) -> tuple[Tensor, Tensor]:
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
def calibration_audio(
    sample_rate: int, seconds: float, generator: torch.Generator, clip_seconds: float = 1.0
) -> Tensor:
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
        noise = torch.randn(clip, generator=generator, dtype=torch.float64) * 10 ** (
            -3 * torch.rand(1, generator=generator, dtype=torch.float64)
        )
        knots = torch.rand(5, generator=generator, dtype=torch.float64)
        envelope = torch.nn.functional.interpolate(knots[None, None], size=clip, mode="linear", align_corners=True)[
            0, 0
        ]
        level = 10 ** (-2.5 * torch.rand(1, generator=generator, dtype=torch.float64))
        mix = tones / n_tones + noise
        clips.append(level * envelope * mix / mix.abs().max().clamp_min(1e-12))
    return torch.stack(clips).to(torch.float32)


#: Samples per fitted centroid at least: with one centroid per sample, a residual codebook would
#: quantize its calibration frames exactly and leave the next codebooks nothing but zeros.
SAMPLES_PER_CODE = 4
#: Lloyd iterations of the codebook fit for ``pretrained: false``.
KMEANS_ITERS = 20


def fit_codebook(
    samples: Tensor, size: int, generator: torch.Generator, spherical: bool = False, iters: int = KMEANS_ITERS
) -> Tensor:
    """A ``[size, D]`` codebook from ``samples`` ``[N, D]``: k-means (:func:`mertlab.toolkit.kmeans.lloyd_kmeans`,
    on the CPU, ``spherical`` for cosine lookups) with ``min(size, ceil(N / SAMPLES_PER_CODE))``
    centroids, repeated to fill ``size`` rows when there are fewer (nearest-code lookups return
    the first of equal rows, so repeats stay unused)."""
    samples = samples.detach().float().cpu()
    k = min(size, -(-samples.shape[0] // SAMPLES_PER_CODE))
    fitted = lloyd_kmeans(samples, k, n_iter=iters, generator=generator, spherical=spherical)
    return fitted.repeat(-(-size // fitted.shape[0]), 1)[:size]


# --------------------------------------------------------------------------- the teacher
class CodecTeacher(CheckedFrameTeacher):
    """Discrete RVQ codes ``[B, T, n_codebooks]`` of a frozen neural codec.

    A subclass builds (or loads) its codec in its constructor and hands it to :meth:`hold`;
    it implements :meth:`encode` (one group of equal-length clips) and :meth:`fit_codebooks`
    (``pretrained: false``). Its params have ``pretrained``, ``seed`` and ``init_seconds``.

    * A clip of ``n`` samples gives ``ceil(n / hop_length)`` frames (:meth:`num_frames`;
      codecs pad the last frame); an empty clip is an error.
    * Clips of a batch are encoded in groups of equal length (:func:`encode_by_length`), so
      padding never leaks into a clip's codes; batched codes equal one-clip-at-a-time codes up
      to float rounding (another batch size may sum the encoder's convolutions in another order
      and flip rare near-tie codes).
    * The codec stays in eval mode and frozen; :meth:`fingerprint` covers a hash of its encoder
      and quantizer weights.
    """

    target_kind = "discrete"
    #: Samples per frame of the codec.
    hop_length: int
    #: Codebooks kept (the first ones of the residual stack).
    n_codebooks: int
    #: The codec, frozen (set by :meth:`hold`): encodec's EncodecModel, dac's DAC (packages without
    #: type information).
    model: Any

    def hold(self, model: nn.Module, *, hop_length: int, n_codebooks: int, codebook_size: int) -> None:
        """Keep ``model`` frozen in eval mode, fit its codebooks when ``params.pretrained`` is
        false, then hash the weights that produce the codes."""
        self.model = model.eval().requires_grad_(False)
        self.hop_length = hop_length
        self.n_codebooks = n_codebooks
        self.target_info = TargetInfo(
            kind="discrete",
            dim=n_codebooks,
            frame_rate=self.sample_rate / hop_length,
            vocab_sizes=(codebook_size,) * n_codebooks,
        )
        if not self.params.pretrained:
            generator = torch.Generator().manual_seed(self.params.seed)
            with torch.no_grad():
                self.fit_codebooks(calibration_audio(self.sample_rate, self.params.init_seconds, generator), generator)
        self._weights_hash = state_hash(
            {k: v for k, v in self.model.state_dict().items() if k.startswith(("encoder.", "quantizer."))}
        )

    @abstractmethod
    def fit_codebooks(self, audio: Tensor, generator: torch.Generator) -> None:
        """Fit the used residual codebooks of the random-init codec, in order, on its encoder
        frames of ``audio`` ``[clips, samples]`` (:func:`calibration_audio`), drawing from ``generator``."""

    @abstractmethod
    def encode(self, audio: Tensor) -> Tensor:
        """``audio`` ``[b, 1, n]`` (clips of one length, on the codec's device and dtype) ->
        ``[b, T, n_codebooks]`` integer codes."""

    @property
    def label(self) -> str:
        return f"{self.name} teacher"

    @property
    def sample_rate(self) -> int:
        return int(self.model.sample_rate)

    def train(self, mode: bool = True) -> CodecTeacher:
        super().train(mode)
        self.model.eval()  # frozen: never the codec's training behaviour (quantizer dropout, EMA codebooks)
        return self

    def num_frames(self, num_samples: int) -> int:
        """Frames for a clip of ``num_samples`` samples (>= 1)."""
        return -(-num_samples // self.hop_length)

    def frame_targets(self, wav: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        return encode_by_length(wav, [int(n) for n in lengths.tolist()], self._encode)

    def _encode(self, wav: Tensor) -> Tensor:
        weight = next(self.model.parameters())
        return self.encode(wav[:, None].to(device=weight.device, dtype=weight.dtype))

    def fingerprint_payload(self) -> Any:
        return {"weights_sha256": self._weights_hash}


# --------------------------------------------------------------------------- params
# The params fields every codec teacher has, declared by each teacher's Params in its own order.
def pretrained_field() -> Any:
    """The ``pretrained: bool`` field of a codec teacher's params."""
    return Field(
        True,
        description="Load the released weights from a local file; false builds the architecture with "
        "seeded random weights and k-means-fitted codebooks (tests, quickstart: codes carry no meaning).",
    )


def seed_field() -> Any:
    """The ``seed: int`` field of a codec teacher's params."""
    return Field(0, ge=0, description="Seed of the random weights and codebook fit (pretrained: false only).")


def init_seconds_field() -> Any:
    """The ``init_seconds: float`` field of a codec teacher's params."""
    return Field(
        8.0,
        gt=0,
        le=600,
        description="Seconds of seeded synthetic audio whose encoder frames fit the random codebooks "
        "(pretrained: false only; one fitted code per 4 frames, up to 1024).",
    )


def weights_need_pretrained(params: Any) -> None:
    """Reject ``weights`` set together with ``pretrained: false`` (a params validator's check)."""
    if params.weights is not None and not params.pretrained:
        raise ValueError("weights is set but pretrained is false; drop one of them")
