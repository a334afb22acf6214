"""Frame-level audio features shared by teachers (log-mel, MFCC + deltas, chroma, backbone layers).

Every feature here is a :class:`FrameFeature`: ``feature(wav [B, S], lengths [B]) ->
(features [B, T, dim], frame_lengths [B])`` and guarantees that a padded batch gives the same
valid frames as each clip alone. Spectral features use centred frames with **zero** (constant)
padding, so a clip of ``n >= 1`` samples has ``1 + n // hop`` frames (one frame even when it is
shorter than the window): reflect padding would fail on clips shorter than half a window, and
samples past ``lengths`` are zeroed first, so padding never leaks into valid frames.

:class:`CheckedFrameTeacher` is the base of the built-in teachers computed from such features:
it checks every batch (:func:`check_audio_batch`) before its :meth:`frame_targets` runs.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from mertlab.contracts import FrameTeacherBase, TargetInfo, Targets
from mertlab.errors import DataError, MertlabError

#: Added to mel energies before the log: keeps silence finite (log(1e-6) ~ -13.8).
LOG_EPS = 1e-6
#: Below this std a dimension (or clip) counts as constant, e.g. silence: it standardises to 0.
STD_EPS = 1e-5


def _torchaudio():
    """torchaudio, imported on first use (it takes a second; `mertlab plugins` never needs it)."""
    return importlib.import_module("torchaudio")


def check_audio_batch(wav: Tensor, lengths: Tensor, who: str) -> None:
    """Raise a one-line :class:`~mertlab.errors.DataError` (``who: ...``) unless ``wav`` is float
    mono audio ``[B, S]``, ``lengths`` ``[B]`` whole numbers of samples in ``1..S`` and every
    valid sample finite (a teacher would silently turn NaN into arbitrary targets)."""
    if wav.dim() != 2 or not wav.is_floating_point():
        raise DataError(f"{who}: expected float mono audio [batch, samples]; got {tuple(wav.shape)} {wav.dtype}")
    if lengths.shape != (wav.shape[0],):
        raise DataError(f"{who}: lengths must be [batch={wav.shape[0]}]; got shape {tuple(lengths.shape)}")
    if lengths.is_floating_point() and not torch.equal(lengths, lengths.round()):
        raise DataError(f"{who}: lengths must be whole numbers of samples; got {lengths.tolist()}")
    for i, n in enumerate(int(n) for n in lengths.tolist()):
        if not 1 <= n <= wav.shape[1]:
            raise DataError(
                f"{who}: clip {i} has {n} valid samples; expected 1..{wav.shape[1]} "
                "(clip lengths must be between 1 and the padded length: empty clips have no frames)"
            )
    if not bool(torch.isfinite(wav[valid_frames(lengths.to(wav.device), wav.shape[1])]).all()):
        raise DataError(f"{who}: audio contains NaN or infinite samples")


def zero_padding(wav: Tensor, lengths: Tensor) -> Tensor:
    """``wav`` with samples at and after ``lengths[b]`` set to zero."""
    steps = torch.arange(wav.shape[1], device=wav.device)
    return wav.masked_fill(steps[None, :] >= lengths.to(wav.device)[:, None], 0.0)


def centred_frames(num_samples: Tensor, hop_length: int) -> Tensor:
    """Frames of a centred STFT/CQT: ``1 + n // hop``."""
    return 1 + torch.div(num_samples, hop_length, rounding_mode="floor")


def pad_frames(frames: list[Tensor]) -> Tensor:
    """Stack ``[T_i, D]`` tensors into ``[B, max T_i, D]`` with zero padding."""
    return nn.utils.rnn.pad_sequence(frames, batch_first=True)


def stack_frames(
    frames: Tensor, frame_lengths: Tensor, stack: int, lengths: Tensor, hop_length: int, who: str
) -> tuple[Tensor, Tensor]:
    """Concatenate ``stack`` consecutive centred frames (hop ``hop_length`` samples):
    ``[B, T, D] -> [B, T // stack, stack * D]``.

    A clip keeps ``frame_lengths // stack`` frames (an incomplete last stack is dropped); a clip
    with none (``lengths``: its samples, for the message) is a one-line :class:`MertlabError`.
    """
    out_lengths = torch.div(frame_lengths, stack, rounding_mode="floor")
    if bool((out_lengths < 1).any()):
        b = int(out_lengths.argmin())
        raise MertlabError(
            f"{who}: clip {b} has {int(lengths[b])} samples, shorter than one frame "
            f"(needs >= {hop_length * (stack - 1)} samples: stack_frames={stack} frames of hop {hop_length})"
        )
    frames_out = int(out_lengths.max())
    return frames[:, : frames_out * stack].reshape(frames.shape[0], frames_out, -1), out_lengths


def valid_frames(frame_lengths: Tensor, num_frames: int) -> Tensor:
    """``[B, num_frames]`` bool, True on each clip's first ``frame_lengths[b]`` frames."""
    return torch.arange(num_frames, device=frame_lengths.device)[None, :] < frame_lengths[:, None]


def standardise_clips(values: Tensor, frame_lengths: Tensor, per_dim: bool = True) -> Tensor:
    """``values`` ``[B, T, D]`` standardised per clip over its ``frame_lengths[b]`` valid frames:
    each dimension to zero mean and unit std (``per_dim``), or one mean/std over all dimensions.
    Statistics never mix clips of a batch; a constant dimension or clip (std <= :data:`STD_EPS`,
    e.g. silence) becomes 0, not rounding noise blown up by a tiny std."""
    weight = valid_frames(frame_lengths, values.shape[1]).to(values.dtype)[:, :, None]  # [B, T, 1]
    dims = (1,) if per_dim else (1, 2)
    count = weight.sum(dim=1, keepdim=True) * (1 if per_dim else values.shape[2])
    mean = (values * weight).sum(dim=dims, keepdim=True) / count
    std = ((((values - mean) * weight) ** 2).sum(dim=dims, keepdim=True) / count).sqrt()
    return torch.where(std > STD_EPS, (values - mean) / std.clamp(min=STD_EPS), 0.0)


def fit_statistics(frames: Tensor) -> tuple[Tensor, Tensor]:
    """``(mean [D], std [D])`` of ``frames`` ``[N, D]`` (population std, at least :data:`STD_EPS`):
    what fitted teachers standardise their features with."""
    return frames.mean(0), frames.std(0, unbiased=False).clamp(min=STD_EPS)


def collect_frames(
    extract: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]],
    batches: Iterable[tuple[Tensor, Tensor]],
    limit: int,
    device: torch.device | str,
    who: str,
    progress: bool = True,
) -> Tensor:
    """The valid frames ``[N, D]`` (``N <= limit``: the first ones) of ``extract(wav, lengths) ->
    (frames [B, T, D], frame_lengths [B])`` over ``(wav [B, S], lengths [B])`` batches, run on
    ``device``; what teachers fitted on data (k-means, Mel-RVQ) fit on."""
    chunks: list[Tensor] = []
    total = 0
    with tqdm(total=limit, desc=f"{who} frames", unit="frame", disable=not progress, leave=False) as bar:
        for wav, lengths in batches:
            check_audio_batch(wav, lengths, f"{who} fit")
            feats, frame_lengths = extract(wav.to(device).float(), lengths.to(device))
            frames = feats[valid_frames(frame_lengths, feats.shape[1])][: limit - total]
            chunks.append(frames)
            total += len(frames)
            bar.update(len(frames))
            if total >= limit:
                break
    if not chunks:
        raise MertlabError(f"{who} fit: no audio batches to fit on")
    return torch.cat(chunks)


class FrameFeature(nn.Module, ABC):
    """A frozen frame-level feature extractor (see module docstring for the contract)."""

    @property
    @abstractmethod
    def dim(self) -> int: ...

    @property
    @abstractmethod
    def sample_rate(self) -> int: ...

    @property
    @abstractmethod
    def frame_rate(self) -> float: ...

    @property
    def receptive_field(self) -> float:
        """Seconds of audio a frame reads past its start when frames need a whole window inside
        the clip (:attr:`mertlab.contracts.TargetInfo.receptive_field`); 0 for features that pad
        the clip's end."""
        return 0.0

    @abstractmethod
    def forward(self, wav: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]: ...


class _SpectralFeature(FrameFeature):
    """Common STFT settings: Hann window of ``n_fft`` samples, hop ``hop_length``, centred."""

    def __init__(self, sample_rate: int, n_fft: int, hop_length: int) -> None:
        super().__init__()
        self._sample_rate = sample_rate
        self.hop_length = hop_length
        self.n_fft = n_fft
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)

    @property
    def sample_rate(self) -> int:
        return self._sample_rate

    @property
    def frame_rate(self) -> float:
        return self._sample_rate / self.hop_length

    def _frame_lengths(self, lengths: Tensor) -> Tensor:
        return centred_frames(lengths, self.hop_length)

    def _power(self, wav: Tensor, lengths: Tensor) -> Tensor:
        """``[B, n_fft // 2 + 1, T]`` power spectrogram of the zero-padded batch."""
        return _torchaudio().functional.spectrogram(
            zero_padding(wav, lengths),
            pad=0,
            window=self.window,
            n_fft=self.n_fft,
            hop_length=self.hop_length,
            win_length=self.n_fft,
            power=2.0,
            normalized=False,
            center=True,
            pad_mode="constant",
        )


class LogMel(_SpectralFeature):
    """``log(mel power + 1e-6)``, ``n_mels`` HTK mel bands: ``[B, T, n_mels]``."""

    def __init__(self, sample_rate: int, n_fft: int, hop_length: int, n_mels: int) -> None:
        super().__init__(sample_rate, n_fft, hop_length)
        self.n_mels = n_mels
        self.mel_scale = _torchaudio().transforms.MelScale(n_mels, sample_rate, n_stft=n_fft // 2 + 1)

    @property
    def dim(self) -> int:
        return self.n_mels

    def forward(self, wav: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        mel = self.mel_scale(self._power(wav, lengths))
        return torch.log(mel + LOG_EPS).transpose(1, 2), self._frame_lengths(lengths)


class StackedLogMel(LogMel):
    """:class:`LogMel` with ``stack`` consecutive frames concatenated: ``[B, T // stack, stack * n_mels]``
    at ``sample_rate / (hop_length * stack)`` Hz (MuQ / MusicFM: 4 frames of hop 240 -> 25 Hz).

    ``standardise``: each mel bin to zero mean and unit std over the clip's valid frames before
    stacking (:func:`standardise_clips`; BEST-RQ's per-clip normalisation). ``who`` names the
    user of this feature in errors (a clip too short for one stacked frame).
    """

    def __init__(
        self,
        sample_rate: int,
        n_fft: int,
        hop_length: int,
        n_mels: int,
        stack: int,
        who: str = "log-mel",
        standardise: bool = False,
    ) -> None:
        super().__init__(sample_rate, n_fft, hop_length, n_mels)
        self.stack = stack
        self.who = who
        self.standardise = standardise

    @property
    def dim(self) -> int:
        return self.n_mels * self.stack

    @property
    def frame_rate(self) -> float:
        return self.sample_rate / (self.hop_length * self.stack)

    def forward(self, wav: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        mel, mel_lengths = super().forward(wav, lengths)
        if self.standardise:
            mel = standardise_clips(mel, mel_lengths)
        return stack_frames(mel, mel_lengths, self.stack, lengths, self.hop_length, self.who)


class MFCCDeltas(_SpectralFeature):
    """``n_mfcc`` MFCCs (DCT of log-mel, as HuBERT iteration 1) + deltas + delta-deltas.

    Deltas are taken per clip over its valid frames, so a clip's last frames do not see padding.
    """

    def __init__(self, sample_rate: int, n_fft: int, hop_length: int, n_mels: int, n_mfcc: int) -> None:
        super().__init__(sample_rate, n_fft, hop_length)
        self.n_mfcc = n_mfcc
        # log_mels=True: log(mel + 1e-6). The default dB path clamps at (batch max - 80 dB),
        # which would make one clip's features depend on the others in its batch.
        self.mfcc = _torchaudio().transforms.MFCC(
            sample_rate,
            n_mfcc=n_mfcc,
            log_mels=True,
            melkwargs={
                "n_fft": n_fft,
                "hop_length": hop_length,
                "n_mels": n_mels,
                "center": True,
                "pad_mode": "constant",
            },
        )

    @property
    def dim(self) -> int:
        return 3 * self.n_mfcc

    def forward(self, wav: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        coeffs = self.mfcc(zero_padding(wav, lengths))  # [B, n_mfcc, T]
        frame_lengths = self._frame_lengths(lengths)
        clips = []
        for b, n in enumerate(frame_lengths.tolist()):
            c = coeffs[b, :, :n]
            d1 = _torchaudio().functional.compute_deltas(c)
            d2 = _torchaudio().functional.compute_deltas(d1)
            clips.append(torch.cat([c, d1, d2]).T)
        return pad_frames(clips), frame_lengths


def chroma_filterbank(sample_rate: int, n_fft: int, fmin: float = 27.5) -> Tensor:
    """``[12, n_fft // 2 + 1]`` 0/1 matrix folding STFT bins >= ``fmin`` onto pitch classes (C=0)."""
    freqs = torch.arange(n_fft // 2 + 1, dtype=torch.float64) * sample_rate / n_fft
    bins = torch.nonzero(freqs >= fmin).squeeze(1)
    pitch_class = torch.round(69 + 12 * torch.log2(freqs[bins] / 440.0)).long() % 12
    bank = torch.zeros(12, freqs.numel())
    bank[pitch_class, bins] = 1.0
    return bank


class LogMelChroma(_SpectralFeature):
    """MERT-v0's frame feature: log-mel (``n_mels``) followed by a 12-bin chroma.

    Chroma = STFT power folded onto pitch classes, each frame scaled by its largest class
    (librosa's ``norm=inf``), so it describes harmony independently of loudness. One STFT
    serves both halves.
    """

    def __init__(self, sample_rate: int, n_fft: int, hop_length: int, n_mels: int) -> None:
        super().__init__(sample_rate, n_fft, hop_length)
        self.n_mels = n_mels
        self.mel_scale = _torchaudio().transforms.MelScale(n_mels, sample_rate, n_stft=n_fft // 2 + 1)
        self.register_buffer("chroma_bank", chroma_filterbank(sample_rate, n_fft), persistent=False)

    @property
    def dim(self) -> int:
        return self.n_mels + 12

    def forward(self, wav: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        power = self._power(wav, lengths)
        logmel = torch.log(self.mel_scale(power) + LOG_EPS)
        chroma = torch.einsum("cf,bft->bct", self.chroma_bank, power)
        chroma = chroma / (chroma.amax(dim=1, keepdim=True) + LOG_EPS)
        return torch.cat([logmel, chroma], dim=1).transpose(1, 2), self._frame_lengths(lengths)


#: How :class:`BackboneLayer` normalises each selected layer before averaging them.
LayerNorm = Literal["none", "frame", "time"]


class BackboneLayer(FrameFeature):
    """Hidden states of a frozen backbone: layer ``layer``, or the mean of several layers.

    ``checkpoint``: anything :func:`mertlab.toolkit.checkpoint.load_backbone` reads -- a backbone file
    (``save_backbone``), a training ``.ckpt``, or ``hf:DIR`` (a local Hugging Face HuBERT/MERT
    directory). ``layer`` indexes ``BackboneOutput.hidden_states``: 0 = encoder input, ``i`` =
    output of encoder layer ``i``, negative indices count from the end (-1 = last); a
    sequence of indices averages those layers (data2vec's
    top-K targets), each first normalised by ``normalize``:

    * ``none``  -- as the backbone gives it;
    * ``frame`` -- each frame's vector to zero mean and unit variance over its channels (a
      parameter-free layer norm): independent of the rest of the clip, so cached and
      on-the-fly targets agree;
    * ``time``  -- each channel to zero mean and unit variance over the clip's frames (the
      parameter-free instance norm data2vec applies to speech targets).

    Clips run one at a time: backbones with group-norm extractors give different frames for a
    padded batch, and targets must not depend on batch composition.
    """

    def __init__(self, checkpoint: str | Path, layer: int | Sequence[int], normalize: LayerNorm = "none") -> None:
        super().__init__()
        from mertlab.toolkit.checkpoint import load_backbone

        self.backbone = load_backbone(checkpoint).requires_grad_(False)
        depth = self.backbone.num_layers
        requested = (layer,) if isinstance(layer, int) else tuple(layer)
        bad = [i for i in requested if not -(depth + 1) <= i <= depth]
        self.layers = tuple(i % (depth + 1) for i in requested)  # negative: from the end, -1 = last
        if bad or not self.layers:
            raise MertlabError(
                f"layer {bad[0] if bad else '(none)'} is out of range for the backbone in {checkpoint} "
                f"({self.backbone.num_layers} layers: use 0..{self.backbone.num_layers})"
            )
        self.normalize = normalize

    @property
    def dim(self) -> int:
        return self.backbone.hidden_dim

    @property
    def sample_rate(self) -> int:
        return self.backbone.sample_rate

    @property
    def frame_rate(self) -> float:
        return self.backbone.frame_rate

    @property
    def receptive_field(self) -> float:
        """Seconds of audio a frame reads past its start: ``(first_frame_samples - 1) / sample_rate``,
        where a clip needs ``first_frame_samples`` samples for one frame (a conv frontend's
        window, e.g. 400 samples for HuBERT's CNN, 2048 for the quickstart's filterbank; 1 for a
        frontend that pads the clip's end, which makes it 0)."""
        return (first_frame_samples(self.backbone) - 1) / self.backbone.sample_rate

    def train(self, mode: bool = True) -> BackboneLayer:
        super().train(mode)
        self.backbone.eval()  # frozen feature extractor: dropout stays off
        return self

    def forward(self, wav: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        clips = []
        for b, n in enumerate(lengths.tolist()):
            frames = self.backbone.num_frames(n)
            if frames < 1:
                raise MertlabError(
                    f"clip {b} has {n} samples, too short for one frame of backbone '{self.backbone.name}'"
                )
            states = self.backbone(wav[b : b + 1, :n]).hidden_states
            selected = [_normalise_layer(states[i][0, :frames], self.normalize) for i in self.layers]
            clips.append(selected[0] if len(selected) == 1 else torch.stack(selected).mean(0))
        frame_lengths = torch.tensor([c.shape[0] for c in clips], device=wav.device)
        return pad_frames(clips), frame_lengths


def first_frame_samples(backbone: Any, limit_seconds: float = 60.0) -> int:
    """The fewest samples for which ``backbone.num_frames`` gives a frame (binary search over
    ``num_frames``, which is monotone; ``limit_seconds`` of audio at most)."""
    low, high = 1, max(1, round(limit_seconds * backbone.sample_rate))
    if backbone.num_frames(high) < 1:
        raise MertlabError(f"backbone '{backbone.name}' gives no frame for {limit_seconds:g} s of audio")
    while low < high:
        middle = (low + high) // 2
        if backbone.num_frames(middle) >= 1:
            high = middle
        else:
            low = middle + 1
    return low


def _normalise_layer(h: Tensor, normalize: LayerNorm) -> Tensor:
    """``h`` ``[T, D]`` normalised as :class:`BackboneLayer` documents (eps 1e-5, as torch's norms)."""
    if normalize == "none":
        return h
    dim = -1 if normalize == "frame" else 0
    return (h - h.mean(dim, keepdim=True)) / torch.sqrt(h.var(dim, unbiased=False, keepdim=True) + 1e-5)


class CheckedFrameTeacher(FrameTeacherBase):
    """Base of the built-in frame-level teachers (also open to plugins): a
    :class:`~mertlab.contracts.FrameTeacherBase` whose :meth:`targets` first checks the batch
    (:func:`check_audio_batch`, errors named by :attr:`label`) and hands :meth:`frame_targets` float32
    audio with ``lengths`` on its device.

    The targets' description is known once the teacher is built: a subclass sets
    :attr:`target_info` in its constructor and implements :meth:`frame_targets`.
    """

    #: What :attr:`info` returns; set it in the constructor.
    target_info: TargetInfo

    @property
    def info(self) -> TargetInfo:
        return self.target_info

    @property
    def label(self) -> str:
        """How errors about this teacher's input name it."""
        return f"teacher '{self.name}'"

    def targets(self, wav: Tensor, lengths: Tensor) -> Targets:
        check_audio_batch(wav, lengths, self.label)
        return super().targets(wav.float(), lengths.to(wav.device))
