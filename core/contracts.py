"""The contracts between mertlab and its plugins: teachers, backbones, objectives, maskings,
augmentations.

Every component is a class with three class attributes and a constructor taking its params:

* ``name``    -- unique name within its kind, used in specs (``teachers.rvq.name: encodec``);
* ``summary`` -- one line shown by ``mertlab plugins``;
* ``Params``  -- a pydantic model (subclass :class:`Params`, which forbids unknown fields);
  every field has a default and a ``description`` so ``mertlab schema`` documents it.

Optionally ``test_params`` (a dict, default ``{}``): params for a small, fast instance that needs
no downloaded weights (e.g. ``{"preset": "tiny"}`` or ``{"pretrained": False}``). mertlab's test
suite and :mod:`mertlab.testing` (``contract_tests``, ``mertlab check-plugin``) build components
with them, so a new plugin is tested for free, from its own package too.

Components are built as ``Component(params, **context)``; the context each kind receives is
documented on its base class. The training loop only talks to these base classes, so adding a
teacher never touches it.
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict
from torch import Tensor, nn

from mertlab.code_digest import code_digest
from mertlab.errors import DataError, MertlabError, TeacherOutputError

TargetKind = Literal["discrete", "continuous"]


def _no_provider(component: type) -> tuple[str, str] | None:
    return None


#: ``(distribution, version)`` of the plugin that registered a component class, or None: part of
#: :meth:`Teacher.fingerprint`. The plugin registry (:mod:`mertlab.plugin_system.registry`)
#: passes its lookup in through :func:`use_component_provider` when it loads.
_component_provider: Callable[[type], tuple[str, str] | None] = _no_provider


def use_component_provider(lookup: Callable[[type], tuple[str, str] | None]) -> None:
    """Install the lookup :meth:`Teacher.fingerprint` asks which plugin registered a class."""
    global _component_provider
    _component_provider = lookup


def _teacher_label(teacher: object) -> str:
    """``teacher 'onset_flux' (my-plugin 0.1.0)``, as far as this layer knows the plugin."""
    cls = type(teacher)
    provider = _component_provider(cls)
    origin = f"{provider[0]} {provider[1]}" if provider else f"module {cls.__module__}"
    return f"teacher '{getattr(cls, 'name', cls.__qualname__)}' ({origin})"


def _not_a_tensor(value: object) -> str:
    """What ``value`` is, with the usual fix when it is a near miss of a tensor."""
    kind = type(value)
    name = f"{kind.__module__}.{kind.__qualname__}" if kind.__module__ != "builtins" else kind.__qualname__
    if kind.__module__ == "numpy":
        return f"{name} (convert it: torch.from_numpy(array).float())"
    if isinstance(value, (tuple, list)):
        return f"{name} of {len(value)} (return the tensor itself, not a {kind.__qualname__})"
    return name


class Params(BaseModel):
    """Base of every component's ``Params``: unknown fields are errors, values are validated
    on assignment, and the model is frozen-by-convention (build a new one to change it)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class NoParams(Params):
    """For components that take no parameters."""


# --------------------------------------------------------------------------- teachers
@dataclass(frozen=True)
class TargetInfo:
    """What a teacher produces, known right after construction (before any audio is seen).

    ``kind == "discrete"``: ``vocab_sizes`` has one entry per codebook, ``dim == len(vocab_sizes)``.
    ``kind == "continuous"``: ``vocab_sizes`` is empty and ``dim`` is the feature size.
    ``receptive_field``: seconds of audio one frame reads past its start, for teachers whose
    frames need a whole window inside the clip (a trained backbone's conv frontend: a clip of
    ``s`` seconds has ``floor((s - receptive_field) x frame_rate) + 1`` frames, not ``s x
    frame_rate``); 0 for teachers that pad the clip's end (spectrograms, codecs).
    """

    kind: TargetKind
    dim: int
    frame_rate: float
    vocab_sizes: tuple[int, ...] = ()
    receptive_field: float = 0.0

    @property
    def num_codebooks(self) -> int:
        return len(self.vocab_sizes)


@dataclass
class Targets:
    """A batch of frame-level targets.

    ``values``: ``[B, T, n_codebooks]`` int64 codes (discrete) or ``[B, T, dim]`` float32 (continuous).
    ``lengths``: ``[B]`` number of valid frames per clip (frames past it are padding).

    Frame timing (the contract every consumer relies on, see :class:`Teacher`): frame ``j`` is
    the audio at time ``j / info.frame_rate`` seconds after the clip's first sample; ``T`` and
    each ``lengths[b]`` are within 2 frames of ``(seconds - info.receptive_field) x info.frame_rate``.
    """

    values: Tensor
    lengths: Tensor
    info: TargetInfo

    @property
    def padding_mask(self) -> Tensor:
        """``[B, T]`` bool, True where a frame is padding."""
        steps = torch.arange(self.values.shape[1], device=self.values.device)
        return steps[None, :] >= self.lengths[:, None]


class Teacher(nn.Module, ABC):
    """Turns raw audio into frame-level pseudo-labels (discrete) or regression targets (continuous).

    Constructed as ``Teacher(params)``. Teachers are frozen: ``targets`` runs under ``no_grad``
    and never updates weights. A teacher that must be fitted first (k-means) sets
    ``requires_fit = True`` and implements :meth:`fit`, :meth:`save_state`, :meth:`load_state`.

    **Frame timing.** For a clip of ``S`` samples at :attr:`sample_rate`, frame ``j`` of the
    targets describes the audio at time ``j / info.frame_rate`` (frame 0 at the clip's first
    sample; a centred spectrogram frame ``j`` is centred there, a codec frame ``j`` covers
    ``[j, j + 1) / frame_rate``). ``T`` is within 2 frames of ``S / sample_rate * frame_rate``
    (``ceil``, ``floor`` or ``1 + S // hop`` all qualify) and so is ``lengths[b]`` for clip
    ``b``'s valid samples -- less ``info.receptive_field`` seconds for a teacher whose frames
    each need a window of audio inside the clip (a conv frontend: ``floor((S - field) / hop) + 1``
    frames; the frames it lacks at the end are padding after alignment). mertlab relies on it twice:
    :func:`mertlab.toolkit.align.align_targets` maps frame ``j`` to the backbone frame starting at
    the same time, and the target cache reads a crop starting ``t`` seconds into a file from frame
    ``floor(t * frame_rate)`` of the whole file's targets. Every output is checked against this at the boundary
    (:mod:`mertlab.toolkit.teacher_output`). :class:`FrameTeacher` implements it for hop-based teachers.
    """

    name: ClassVar[str]
    summary: ClassVar[str]
    Params: ClassVar[type[Params]]
    #: The kind of targets; objectives declare which kind they accept (checked when a spec loads).
    target_kind: TargetKind
    requires_fit: ClassVar[bool] = False
    #: Part of :meth:`fingerprint`, like the code itself: bump it when what the targets depend on
    #: changes outside the hashed code (a data file the teacher reads, a dependency's behaviour).
    version: ClassVar[str | int | None] = None

    def __init__(self, params: Any) -> None:
        super().__init__()
        self.params: Any = params  # an instance of the class's own ``Params``: its fields by name

    @property
    @abstractmethod
    def sample_rate(self) -> int:
        """Sample rate (Hz) the teacher expects; callers resample to it."""

    @property
    @abstractmethod
    def info(self) -> TargetInfo:
        """Shape, kind, vocabulary and frame rate of the targets."""

    @abstractmethod
    def targets(self, wav: Tensor, lengths: Tensor) -> Targets:
        """``wav``: ``[B, S]`` float mono at :attr:`sample_rate`; ``lengths``: ``[B]`` valid samples."""

    @classmethod
    def kind_for(cls, params: Any) -> TargetKind:
        """The target kind an instance built with ``params`` gives (checked against objectives
        when a spec loads). Default :attr:`target_kind`; a teacher whose kind follows a param
        (``crepe``'s ``output``) overrides it and sets ``self.target_kind`` to match."""
        return cls.target_kind

    def fingerprint(self) -> str:
        """Stable hash of everything that changes the targets: the teacher's name, params, the
        distribution (name and version) of the plugin that registered it, a hash of its code
        (:func:`mertlab.code_digest.code_digest`: the source of the class's module
        and of its base classes' modules from the same package, docstrings and comments left
        out), its :attr:`version` and :meth:`fingerprint_payload` (fitted state, loaded weights).

        The target cache is keyed by it, so upgrading a plugin package, editing the teacher's
        code (also in an editable install, whose version never changes) or changing a param
        recomputes the cached targets. Teachers with fitted state or weights loaded from a file
        extend :meth:`fingerprint_payload`.
        """
        provider = _component_provider(type(self))
        payload = json.dumps(
            {
                "name": self.name,
                "params": self.params.model_dump(mode="json"),
                "extra": self.fingerprint_payload(),
                "provider": list(provider) if provider is not None else None,
                "code": code_digest(type(self)),
                "version": self.version,
            },
            sort_keys=True,
        )
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    def fingerprint_payload(self) -> Any:
        """Extra JSON-able data mixed into :meth:`fingerprint` (e.g. hash of loaded weights)."""
        return None

    def fit(self, batches: Any, progress: bool = True) -> None:  # pragma: no cover - only for requires_fit teachers
        """Fit the teacher on an iterable of ``(wav, lengths)`` batches at :attr:`sample_rate`
        (``mertlab teachers fit``: random crops from all over the training files, see
        :mod:`mertlab.teachers.fitting`); ``progress``: show progress bars (``--no-progress``
        turns them off)."""
        raise NotImplementedError(f"teacher '{self.name}' does not need fitting")

    def fit_report(self) -> dict[str, float]:
        """What to report of the last :meth:`fit` (``mertlab teachers fit`` prints it), e.g. the
        perplexity of each codebook on the fitting frames; default: nothing."""
        return {}

    def state_file(self) -> str | None:
        """Where a ``requires_fit`` teacher keeps its fitted state (a path from its params), or
        None if unset. ``mertlab teachers fit`` calls :meth:`fit`, then ``save_state(state_file())``."""
        return None


# --------------------------------------------------------------------------- backbones
@dataclass
class BackboneOutput:
    """What a backbone returns.

    ``hidden_states``: tuple of ``[B, T, D]``; index 0 is the encoder input (after feature
    projection / positional embedding), index ``i`` the output of encoder layer ``i``; the last
    is the final output. ``padding_mask``: ``[B, T]`` True at padded frames.
    ``attn_max_logits`` / ``act_rms``: per-layer scalars, filled only when ``instrument=True``.
    ``extractor_features``: pre-projection features (for MERT's feature penalty), optional.
    """

    hidden_states: tuple[Tensor, ...]
    padding_mask: Tensor
    frame_rate: float
    attn_max_logits: list[Tensor] | None = None
    act_rms: list[Tensor] | None = None
    extractor_features: Tensor | None = None

    @property
    def last_hidden_state(self) -> Tensor:
        return self.hidden_states[-1]


class Backbone(nn.Module, ABC):
    """Waveform in, frame features out. Constructed as ``Backbone(params)``.

    ``forward(wav, lengths, frame_mask)``: ``wav`` ``[B, S]`` at :attr:`sample_rate`, ``lengths``
    ``[B]`` valid samples (None = all valid), ``frame_mask`` ``[B, T]`` bool -- frames to replace
    by the learned mask embedding (``T == num_frames(S)``).
    """

    name: ClassVar[str]
    summary: ClassVar[str]
    Params: ClassVar[type[Params]]
    #: ``model_type`` values of Hugging Face ``config.json`` files this backbone can load with
    #: :meth:`load_hf` (e.g. ``("hubert", "mert_model")``); ``load_backbone("hf:DIR")`` picks the
    #: registered backbone that lists the directory's ``model_type``.
    hf_model_types: ClassVar[tuple[str, ...]] = ()

    def __init__(self, params: Any) -> None:
        super().__init__()
        self.params: Any = params  # an instance of the class's own ``Params``: its fields by name

    @classmethod
    def load_hf(cls, directory: str | Path) -> Backbone:
        """Build the backbone from a local Hugging Face model directory (only for backbones
        with :attr:`hf_model_types`); raise :class:`~mertlab.errors.MertlabError` naming what is
        missing or does not fit."""
        raise NotImplementedError(f"backbone '{cls.name}' does not load Hugging Face directories")

    @property
    def sample_rate(self) -> int:
        """Input sample rate (Hz). Default: ``params.sample_rate``."""
        return self.params.sample_rate

    @property
    @abstractmethod
    def frame_rate(self) -> float: ...

    @property
    def hidden_dim(self) -> int:
        """Width of every hidden state. Default: ``params.hidden_dim``."""
        return self.params.hidden_dim

    @property
    def num_layers(self) -> int:
        """Layers; ``hidden_states`` has ``num_layers + 1`` entries. Default: ``params.num_layers``."""
        return self.params.num_layers

    @abstractmethod
    def num_frames(self, num_samples: int) -> int:
        """Frames produced for a clip of ``num_samples`` samples."""

    @property
    def min_samples(self) -> int:
        """The shortest clip (samples) that gives one frame: the receptive field. Shorter audio
        files are skipped when a data set is scanned. Default: found from :meth:`num_frames`
        (which must not decrease with the length); override when it is known in closed form."""
        high = 1
        while self.num_frames(high) < 1:
            if high > 1 << 40:
                raise ValueError(f"backbone '{self.name}': num_frames is 0 for every length")
            high *= 2
        low = high // 2  # num_frames(low) < 1 <= num_frames(high), or high == 1
        while high - low > 1:
            middle = (low + high) // 2
            if self.num_frames(middle) >= 1:
                high = middle
            else:
                low = middle
        return high

    @abstractmethod
    def forward(
        self,
        wav: Tensor,
        lengths: Tensor | None = None,
        frame_mask: Tensor | None = None,
        instrument: bool = False,
    ) -> BackboneOutput: ...

    def checked_input(self, wav: Tensor, lengths: Tensor | None, min_samples: int = 1) -> Tensor | None:
        """The checks every ``forward`` starts with: ``wav`` is ``[batch, samples]`` with at least
        ``min_samples`` samples (the receptive field) and ``lengths`` (when given) is ``[batch]``
        within ``[min_samples, samples]``; returns ``lengths`` as long
        on ``wav``'s device. Errors are one line naming the backbone and the shape or values seen."""

        if wav.dim() != 2:
            raise MertlabError(f"{self.name} backbone expects wav of shape [batch, samples]; got {tuple(wav.shape)}")
        batch, num_samples = wav.shape
        if num_samples < min_samples:
            raise DataError(
                f"clips of {num_samples} samples are shorter than the {self.name} backbone's receptive field "
                f"({min_samples} samples = {min_samples / self.sample_rate * 1000:.1f} ms at {self.sample_rate} Hz)"
            )
        if lengths is None:
            return None
        if lengths.shape != (batch,):
            raise MertlabError(f"{self.name} backbone: lengths must have shape [{batch}]; got {tuple(lengths.shape)}")
        lengths = lengths.to(device=wav.device, dtype=torch.long)
        if bool(((lengths < min_samples) | (lengths > num_samples)).any()):
            raise DataError(
                f"{self.name} backbone: lengths must lie in [{min_samples}, {num_samples}] samples; got "
                f"{lengths.tolist()}"
            )
        return lengths

    def frame_lengths(self, lengths: Tensor) -> Tensor:
        """Valid frames per clip for ``lengths`` valid samples."""
        return torch.tensor([self.num_frames(int(n)) for n in lengths], device=lengths.device)

    def block_names(self) -> dict[str, list[str]]:
        """Groups of parameter-name prefixes for per-block gradient norms (``grad_norm/<block>``).

        Default: one group per top-level child module. Override for finer groups (one per layer).
        """
        return {child: [child + "."] for child, _ in self.named_children()}

    def set_step_seed(self, seed: int) -> None:
        """Seed for random *structural* decisions of the next training forward (layer drop).

        The trainer calls it before every training forward with a seed derived from
        (spec seed, step, micro-batch) -- the same on every data-parallel rank -- so all ranks
        drop the same layers, as one process would for the whole global batch. Draw such
        decisions from a generator seeded here (not from the global RNG, which differs across
        ranks and is also used by dropout). Default: nothing to seed.
        """

    def save_hf(self, directory: Path) -> None:
        """Write a Hugging Face model directory (``config.json`` + ``model.safetensors``) that
        ``transformers`` loads (``mertlab export --format hf``). Default: not supported."""

        raise MertlabError(f"backbone '{self.name}' has no Hugging Face format to export to")

    def layer_classes(self) -> set[type[nn.Module]]:
        """The repeated block classes (transformer/conformer layers): FSDP wraps and shards each
        instance as one unit and activation checkpointing recomputes each one. Default: none
        (FSDP then shards the model as one unit)."""
        return set()


# --------------------------------------------------------------------------- objectives
@dataclass
class ObjectiveOutput:
    """``loss``: scalar; ``metrics``: extra scalars logged as ``<family>/<alias>/<key>``.

    Metric keys are ``"acc/cb0"``-style: the training loop logs ``acc/cb0`` of objective alias
    ``rvq`` as ``acc/rvq/cb0``.
    """

    loss: Tensor
    metrics: dict[str, Tensor] = field(default_factory=dict)


class Objective(nn.Module, ABC):
    """A training loss on backbone features against (aligned) teacher targets.

    Constructed as ``Objective(params, hidden_dim=..., num_layers=..., target_info=TargetInfo)``.
    ``forward(out, targets, mask)``: ``targets`` are already aligned to the backbone's frames
    (``targets.values.shape[1] == T``); ``mask`` ``[B, T]`` True at masked frames.
    """

    name: ClassVar[str]
    summary: ClassVar[str]
    Params: ClassVar[type[Params]]
    #: Target kinds this objective can learn from.
    accepts: ClassVar[tuple[TargetKind, ...]]

    def __init__(self, params: Any, *, hidden_dim: int, num_layers: int, target_info: TargetInfo) -> None:
        super().__init__()
        self.params: Any = params  # an instance of the class's own ``Params``: its fields by name
        self.hidden_dim = hidden_dim
        self.num_layers = num_layers
        self.target_info = target_info

    @abstractmethod
    def forward(self, out: BackboneOutput, targets: Targets, mask: Tensor) -> ObjectiveOutput: ...


# --------------------------------------------------------------------------- masking
class Masking(ABC):
    """Chooses which frames the student sees replaced by the mask embedding.

    Constructed as ``Masking(params)``; called as ``masking(padding_mask, generator)`` with
    ``padding_mask`` ``[B, T]`` (True = padding) and returns a ``[B, T]`` bool mask that is
    never True on padding.
    """

    name: ClassVar[str]
    summary: ClassVar[str]
    Params: ClassVar[type[Params]]

    def __init__(self, params: Any) -> None:
        self.params: Any = params  # an instance of the class's own ``Params``: its fields by name

    @abstractmethod
    def __call__(self, padding_mask: Tensor, generator: torch.Generator | None = None) -> Tensor: ...


class Augmentation(ABC):
    """Perturbs the *student's* input waveform in training steps (teachers see the clean audio).

    Constructed as ``Augmentation(params)``; called as ``augmentation(wav, lengths, generator)``
    with ``wav`` ``[B, S]`` (clip ``i`` has ``lengths[i]`` valid samples, then padding) and
    returns a new ``[B, S]`` tensor of the same dtype and device: ``wav`` itself is left
    untouched, padding is not filled with sound. All randomness comes from ``generator`` (a CPU
    generator seeded from the run's seed and the step's position: (seed, step, micro-batch,
    rank, augmentation alias)), so a resumed run draws what the uninterrupted one drew. A spec
    lists augmentations under ``augment:``; they run in that order, each on the previous one's
    output, in training steps only.
    """

    name: ClassVar[str]
    summary: ClassVar[str]
    Params: ClassVar[type[Params]]

    def __init__(self, params: Any) -> None:
        self.params: Any = params  # an instance of the class's own ``Params``: its fields by name

    @abstractmethod
    def __call__(self, wav: Tensor, lengths: Tensor, generator: torch.Generator | None = None) -> Tensor: ...


class FrameTeacherBase(Teacher):
    """What every frame-level teacher's :meth:`targets` does around its :meth:`frame_targets`.

    :meth:`targets` runs :meth:`frame_targets` without gradients, zeroes the frames past each
    clip's frame count (padding never holds stale values) and returns contiguous int64 codes
    (discrete) or float32 features (continuous) with :attr:`info`. :attr:`sample_rate` defaults
    to the ``sample_rate`` params field. Subclass :class:`FrameTeacher` for a hop-based teacher
    (it implements :meth:`frame_targets` with your ``compute``); a teacher with its own frame
    counts (centred frames, a codec's) subclasses this and implements :meth:`frame_targets`
    and :attr:`info`.
    """

    @property
    def sample_rate(self) -> int:
        """Sample rate the teacher expects; default: the ``sample_rate`` params field."""
        return int(self.params.sample_rate)

    @abstractmethod
    def frame_targets(self, wav: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """``wav`` ``[B, S]``, ``lengths`` ``[B]`` valid samples -> ``(values [B, T, C], frame_lengths [B])``:
        the targets of every clip and its number of valid frames (values past it are zeroed)."""

    @torch.no_grad()
    def targets(self, wav: Tensor, lengths: Tensor) -> Targets:
        pair = self.frame_targets(wav, lengths)
        if not (isinstance(pair, tuple) and len(pair) == 2 and all(isinstance(t, Tensor) for t in pair)):
            got = (
                "(" + ", ".join(_not_a_tensor(t) if not isinstance(t, Tensor) else "Tensor" for t in pair) + ")"
                if isinstance(pair, tuple) and len(pair) == 2
                else _not_a_tensor(pair)
            )
            raise TeacherOutputError(
                f"{_teacher_label(self)}: frame_targets() must return (values [B, T, C], frame_lengths [B]), "
                f"two torch tensors; got {got}"
            )
        values, frame_lengths = pair
        if values.dim() == 3:
            steps = torch.arange(values.shape[1], device=values.device)
            values = values.masked_fill((steps[None, :] >= frame_lengths.to(values.device)[:, None])[:, :, None], 0)
        if self.target_kind == "discrete" and not values.dtype.is_floating_point:
            values = values.long()
        elif self.target_kind == "continuous" and values.dtype.is_floating_point:
            values = values.float()
        return Targets(values=values.contiguous(), lengths=frame_lengths, info=self.info)


class FrameTeacher(FrameTeacherBase):
    """A teacher that is its ``Params`` and one :meth:`compute` method.

    For frame-level teachers with a fixed hop: frame ``j`` starts at sample ``j * hop_length``
    (the convention of :class:`Teacher`), a clip of ``S`` valid samples has
    :meth:`num_frames` ``(S) = ceil(S / hop_length)`` frames. The helper provides
    :attr:`sample_rate` and :attr:`hop_length` (from the params fields of those names unless
    overridden), :attr:`info`, zeroes the input past each clip's length before :meth:`compute`
    (padding never leaks into valid frames), and returns int64 codes / float32 features with
    the frames past each clip's length zeroed. Subclasses set ``name``, ``summary``,
    ``Params``, ``target_kind`` and either ``dim`` (continuous) or ``vocab_sizes`` (discrete).
    """

    #: Feature size of continuous targets (set it, or override the property in a subclass).
    dim: ClassVar[int] = 0
    #: Codebook sizes of discrete targets, one per codebook.
    vocab_sizes: ClassVar[tuple[int, ...]] = ()

    @property
    def hop_length(self) -> int:
        """Samples between frame starts; default: the ``hop_length`` params field."""
        return int(self.params.hop_length)

    @property
    def info(self) -> TargetInfo:
        dim = len(self.vocab_sizes) if self.target_kind == "discrete" else self.dim
        return TargetInfo(self.target_kind, dim, self.sample_rate / self.hop_length, tuple(self.vocab_sizes))

    def num_frames(self, num_samples: int | Tensor) -> Any:
        """Frames of a clip of ``num_samples`` samples: ``ceil(num_samples / hop_length)``."""
        return -(-num_samples // self.hop_length)

    @abstractmethod
    def compute(self, wav: Tensor) -> Tensor:
        """``wav`` ``[B, S]`` (zero past each clip's end) -> ``[B, num_frames(S), D]`` targets
        (codes for discrete teachers, features for continuous ones)."""

    def frame_targets(self, wav: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """:meth:`compute` on ``wav`` zeroed past each clip's length; ``num_frames`` frames a clip."""
        steps = torch.arange(wav.shape[1], device=wav.device)
        values = self.compute(wav.masked_fill(steps[None, :] >= lengths[:, None].to(wav.device), 0.0))
        if not isinstance(values, Tensor):
            raise TeacherOutputError(
                f"{_teacher_label(self)}: compute() must return a torch.Tensor [B, frames, "
                f"{'n_codebooks' if self.target_kind == 'discrete' else 'dim'}], got {_not_a_tensor(values)}"
            )
        return values, self.num_frames(lengths.to(values.device).long()).clamp(max=values.shape[1])


@dataclass(frozen=True, eq=False)
class LazyComponent:
    """A component registered by reference, so that listing it, validating a spec against its
    ``Params`` and printing its schema never import its implementation (and the heavy packages
    that imports: Lightning, codecs...). ``register(LazyComponent("pkg.module:Class", name=...,
    summary=..., Params=..., target_kind=...))`` declares what the class would carry; the class
    is imported on first use (building it) and must carry the same values.

    ``attributes``: the kind's other class attributes (``target_kind``, ``accepts``,
    ``requires_fit``, ``test_params``), readable as attributes of the declaration.
    """

    target: str
    name: str
    summary: str
    Params: type
    attributes: dict[str, Any] = field(default_factory=dict)

    def __init__(self, target: str, *, name: str, summary: str, Params: type, **attributes: Any) -> None:
        object.__setattr__(self, "target", target)
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "summary", summary)
        object.__setattr__(self, "Params", Params)
        object.__setattr__(self, "attributes", dict(attributes))

    def __getattr__(self, item: str) -> Any:
        attributes = self.__dict__.get("attributes", {})
        if item in attributes:
            return attributes[item]
        raise AttributeError(item)
