"""Contract tests for mertlab components, shipped with mertlab so plugin packages can run them.

In a plugin package's test file, one line tests a component against its contract::

    from mertlab.testing import contract_tests

    test_onset_flux = contract_tests("teacher", "onset_flux")

That is a pytest test parametrized over the checks of the component's kind (each reported
on its own, e.g. ``test_onset_flux[determinism]``); ``mertlab check-plugin onset_flux`` runs the
same checks from the command line. Components are built with their ``test_params`` (a small,
download-free configuration) and run on generated music (:func:`contract_audio`: tones with
onsets, drum transients, clicks and a noise burst).

Teacher checks: registration contract; outputs through the boundary check of
:mod:`mertlab.toolkit.teacher_output` (shape, dtype, code range, finite values, lengths and frame
counts against ``info.frame_rate``); determinism; a batch with junk padding equals each clip
alone; padding content does not change valid frames; fingerprint stability; the target cache
round-trip. Backbones, objectives, maskings, augmentations and callbacks get the checks of their
contract.
mertlab's own test suite runs these very checks on every registered component.
"""

from __future__ import annotations

import dataclasses
import functools
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mertlab.contracts import Augmentation, Backbone, BackboneOutput, Masking, Objective, TargetInfo, Targets, Teacher
from mertlab.data.demo import render_piece
from mertlab.errors import MertlabError, ObjectiveError, TeacherOutputError
from mertlab.plugin_system.registry import component_label, contract_problems, get_registry
from mertlab.teachers.target_cache import TeacherCache, Windowing, compute_file_targets
from mertlab.toolkit.checkpoint import save_backbone
from mertlab.toolkit.objective_output import check_objective_output, objective_label
from mertlab.toolkit.teacher_output import check_targets

RegistryLike = Any  # a mertlab.plugin_system.registry.Registry, or a zero-argument callable returning one


class ContractViolation(MertlabError):
    """A component does not honour its contract; the message names it, its origin and the check."""


class CheckSkipped(Exception):
    """A check does not apply to this component (e.g. a teacher that must be fitted first)."""


@dataclass(frozen=True)
class CheckResult:
    """Outcome of one check: ``status`` is ``passed``, ``failed`` or ``skipped``."""

    check: str
    status: str
    message: str = ""


# --------------------------------------------------------------------------- audio
def contract_audio(seconds: float, sample_rate: int, seed: int = 0) -> torch.Tensor:
    """``[S]`` float32 generated music at ``sample_rate``: chords and a melody with onsets,
    drums, a click every 0.25 s and a burst of white noise, peak 0.9 (deterministic)."""

    rng = np.random.default_rng([seed, 1234])
    wav = render_piece(seconds, rng, sr=sample_rate).astype(np.float64)
    n = wav.shape[0]
    for start in range(0, n, max(1, sample_rate // 4)):  # clicks: sharp transients
        wav[start : start + max(1, sample_rate // 1000)] += 0.6
    burst = slice(n // 3, n // 3 + n // 10)
    wav[burst] += rng.normal(0, 0.3, wav[burst].shape)
    return torch.from_numpy(0.9 * wav / max(np.abs(wav).max(), 1e-6)).float()


def _batch(clips: list[torch.Tensor], pad: float | str = 0.0, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(wav [B, max S], lengths)``; padding is ``pad`` or, for ``"noise"``, loud noise."""
    lengths = torch.tensor([c.numel() for c in clips])
    g = torch.Generator().manual_seed(seed)
    wav = (
        torch.randn(len(clips), int(lengths.max()), generator=g)
        if pad == "noise"
        else torch.full((len(clips), int(lengths.max())), float(pad))
    )
    for b, c in enumerate(clips):
        wav[b, : c.numel()] = c
    return wav, lengths


# --------------------------------------------------------------------------- helpers
def _resolve(registry: RegistryLike) -> Any:
    if registry is None:
        return get_registry()
    return registry() if callable(registry) and not hasattr(registry, "get") else registry


def _build(entry: Any, **context: Any) -> Any:
    params = dict(getattr(entry.component, "test_params", {}) or {})
    if "checkpoint" in entry.params_model.model_fields and not params.get("checkpoint"):
        # a teacher reading a trained backbone gets a tiny one, where its params accept one
        # (kmeans takes a checkpoint only with feature=hidden)
        with_checkpoint = {**params, "checkpoint": _tiny_backbone_file()}
        try:
            entry.params_model.model_validate(with_checkpoint)
        except ValueError:  # pydantic's ValidationError is a ValueError
            pass
        else:
            params = with_checkpoint
    return entry.build(params, **context)


@functools.lru_cache(maxsize=1)
def _tiny_backbone_file() -> str:
    """A saved tiny ``transformer`` backbone (a temporary file, once per process)."""
    import tempfile

    import torch

    torch.manual_seed(0)
    backbone = get_registry().build("backbone", "transformer", {"preset": "tiny"})
    return str(save_backbone(Path(tempfile.mkdtemp(prefix="mertlab-contract-")) / "backbone.safetensors", backbone))


def _label(entry: Any) -> str:
    return component_label(entry.component, entry.kind)


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ContractViolation(message)


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.shape != b.shape:
        return False
    if a.dtype.is_floating_point:
        return bool(torch.allclose(a, b, rtol=1e-4, atol=1e-5))
    return bool(torch.equal(a, b))


# --------------------------------------------------------------------------- checks: every kind
def check_registration(entry: Any) -> None:
    """Registration contract, default params round-trip through JSON, a JSON schema, and
    ``test_params`` valid."""

    problems = contract_problems(entry.kind, entry.component)
    _require(not problems, "; ".join(problems))
    params = entry.params_model()
    _require(
        entry.params_model.model_validate(params.model_dump(mode="json")) == params,
        "default params do not survive a JSON round-trip",
    )
    import json

    json.dumps(entry.params_model.model_json_schema())
    _require(
        entry.params_model.model_config.get("extra") == "forbid",
        "Params must forbid unknown fields (subclass mertlab.contracts.Params)",
    )
    test_params = getattr(entry.component, "test_params", {})
    _require(isinstance(test_params, dict), f"test_params must be a dict, got {test_params!r}")
    entry.validate_params(test_params)


# --------------------------------------------------------------------------- checks: teachers
def _teacher(entry: Any, fresh: bool = False) -> Any:
    """The entry's teacher built with its ``test_params`` (shared by the checks: teachers are
    frozen; ``fresh`` builds a second instance)."""

    teacher = _build(entry) if fresh else _shared_teacher(entry)
    _require(isinstance(teacher, Teacher), f"built a {type(teacher).__name__}, not a mertlab.contracts.Teacher")
    _require(
        teacher.target_kind == teacher.info.kind,
        f"target_kind is {teacher.target_kind!r} but info.kind is {teacher.info.kind!r}",
    )
    if teacher.requires_fit:
        raise CheckSkipped("requires fitting first (requires_fit = True)")
    return teacher.eval()


@functools.lru_cache(maxsize=2)
def _shared_teacher(entry: Any) -> Any:
    return _build(entry)


def _clips(rate: int) -> list[torch.Tensor]:
    return [contract_audio(1.0, rate, seed=1), contract_audio(0.6, rate, seed=2)]


def _targets(teacher: Any, wav: torch.Tensor, lengths: torch.Tensor) -> Any:
    with torch.no_grad():
        return check_targets(teacher, teacher.targets(wav, lengths), wav.shape[1], lengths)


def check_teacher_outputs(entry: Any) -> None:
    """Shapes, dtypes, code range, finite values, lengths and frame counts (the boundary check)."""
    teacher = _teacher(entry)
    wav, lengths = _batch(_clips(teacher.sample_rate))
    out = _targets(teacher, wav, lengths)
    _require(
        int(out.lengths[1]) < int(out.lengths[0]),
        f"a shorter clip must have fewer valid frames, got lengths {out.lengths.tolist()}",
    )


def check_teacher_determinism(entry: Any) -> None:
    """The same audio gives the same targets twice, and from a second instance."""
    teacher = _teacher(entry)
    wav, lengths = _batch(_clips(teacher.sample_rate))
    first, again, other = (_targets(t, wav, lengths) for t in (teacher, teacher, _teacher(entry, fresh=True)))
    _require(_same(first.values, again.values), "two calls on the same audio gave different targets")
    _require(_same(first.values, other.values), "two instances with the same params gave different targets")


def check_teacher_batching(entry: Any) -> None:
    """A padded batch gives each clip the valid frames (and length) it has alone."""
    teacher = _teacher(entry)
    clips = _clips(teacher.sample_rate)
    wav, lengths = _batch(clips, pad=0.5)
    batch = _targets(teacher, wav, lengths)
    for b, clip in enumerate(clips):
        alone = _targets(teacher, clip[None], torch.tensor([clip.numel()]))
        n = int(alone.lengths[0])
        _require(int(batch.lengths[b]) == n, f"clip {b}: {int(batch.lengths[b])} valid frames in a batch, {n} alone")
        _require(
            _same(batch.values[b, :n], alone.values[0, :n]),
            f"clip {b}: valid frames differ between a padded batch and the clip alone",
        )


def check_teacher_padding(entry: Any) -> None:
    """What lies past a clip's length (zeros or loud noise) does not change its valid frames."""
    teacher = _teacher(entry)
    clip = contract_audio(0.6, teacher.sample_rate, seed=3)
    padded = torch.cat([clip, torch.zeros(teacher.sample_rate // 2)])
    lengths = torch.tensor([clip.numel()])
    zeros = _targets(teacher, padded[None], lengths)
    noisy = padded.clone()
    noisy[clip.numel() :] = torch.randn(noisy.numel() - clip.numel(), generator=torch.Generator().manual_seed(0))
    noise = _targets(teacher, noisy[None], lengths)
    n = int(zeros.lengths[0])
    _require(_same(zeros.values[0, :n], noise.values[0, :n]), "noise in the padding changed the valid frames")


def check_teacher_fingerprint(entry: Any) -> None:
    """Two instances with the same params have the same fingerprint (the cache key)."""
    a, b = _shared_teacher(entry), _build(entry)
    fingerprint = a.fingerprint()
    _require(
        isinstance(fingerprint, str) and bool(fingerprint),
        f"fingerprint() must be a non-empty str, got {fingerprint!r}",
    )
    _require(fingerprint == b.fingerprint(), "fingerprint() differs between two instances with the same params")


def check_teacher_cache_round_trip(entry: Any) -> None:
    """Targets stored in and read back from the target cache equal the teacher's own."""
    import soundfile as sf

    from mertlab.data.audio import probe  # imported here: torchaudio loads on use

    teacher = _teacher(entry)
    clip = contract_audio(1.0, teacher.sample_rate, seed=4)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "clip.wav"
        sf.write(str(path), clip.numpy(), teacher.sample_rate, subtype="FLOAT")
        file = probe(path)
        windowing = Windowing()
        cache = TeacherCache(Path(tmp) / "cache", teacher, windowing)
        entry_path = cache.entry(path)
        cache.store(entry_path, compute_file_targets(teacher, file, windowing))
        read = torch.from_numpy(np.array(TeacherCache(Path(tmp) / "cache", teacher).read(path)))
    whole = _targets(teacher, clip[None], torch.tensor([clip.numel()]))
    n = int(whole.lengths[0])
    expected = whole.values[0, :n]
    _require(
        read.shape == expected.shape,
        f"cache holds {tuple(read.shape)} targets, the teacher gives {tuple(expected.shape)}",
    )
    _require(_same(read.to(expected.dtype), expected), "targets read back from the cache differ from the teacher's")


# --------------------------------------------------------------------------- checks: other kinds
def _audio_batch(rate: int, seconds: float = 0.5) -> torch.Tensor:
    return torch.stack([contract_audio(seconds, rate, seed=s) for s in (5, 6)])


def check_backbone_forward(entry: Any) -> None:
    """Hidden states, padding mask, frame rate and instrumentation as the contract says."""

    torch.manual_seed(0)
    backbone = _build(entry).eval()
    _require(isinstance(backbone, Backbone), f"built a {type(backbone).__name__}, not a mertlab.contracts.Backbone")
    wav = _audio_batch(backbone.sample_rate)
    samples = wav.shape[1]
    frames = backbone.num_frames(samples)
    mask = torch.zeros(2, frames, dtype=torch.bool)
    mask[:, 2:5] = True
    with torch.no_grad():
        out = backbone(wav, torch.tensor([samples, samples // 2]), mask, instrument=True)
    _require(isinstance(out, BackboneOutput), f"forward returned {type(out).__name__}, not BackboneOutput")
    _require(
        len(out.hidden_states) == backbone.num_layers + 1,
        f"{len(out.hidden_states)} hidden states for {backbone.num_layers} layers (expected layers + 1)",
    )
    for i, h in enumerate(out.hidden_states):
        which = "last hidden state" if i == len(out.hidden_states) - 1 else f"hidden state {i}"
        _require(isinstance(h, torch.Tensor), f"{which} is a {type(h).__name__}, not a torch.Tensor")
        _require(
            h.shape == (2, frames, backbone.hidden_dim),
            f"{which} {tuple(h.shape)}, expected {(2, frames, backbone.hidden_dim)} "
            f"([batch, num_frames(samples), hidden_dim])",
        )
        _require(h.dtype.is_floating_point, f"{which} must be floating point, got {h.dtype}")
        _require(bool(torch.isfinite(h[0]).all()), f"{which} holds NaN/inf on valid frames")
    _require(
        out.padding_mask.shape == (2, frames)
        and bool(out.padding_mask[1].any())
        and not bool(out.padding_mask[0].any()),
        "padding_mask must be [B, T], True exactly at the frames past each clip's length",
    )
    _require(
        out.frame_rate == backbone.frame_rate,
        f"output frame_rate {out.frame_rate} != backbone.frame_rate {backbone.frame_rate}",
    )
    _require(
        out.attn_max_logits is not None
        and out.act_rms is not None
        and len(out.attn_max_logits) == len(out.act_rms) == backbone.num_layers,
        "instrument=True must fill attn_max_logits and act_rms with one value per layer",
    )
    _require(bool(backbone.block_names()), "block_names() must name at least one block")


def check_backbone_determinism(entry: Any) -> None:
    """In eval mode the same input gives the same features."""
    torch.manual_seed(0)
    backbone = _build(entry).eval()
    wav = _audio_batch(backbone.sample_rate)
    with torch.no_grad():
        first, second = backbone(wav), backbone(wav)
    _require(isinstance(first, BackboneOutput), f"forward returned {type(first).__name__}, not BackboneOutput")
    a, b = first.last_hidden_state, second.last_hidden_state
    _require(bool(torch.isfinite(a).all()), "the last hidden state holds NaN/inf")
    _require(_same(a, b), "two forward passes in eval mode gave different features")


# --------------------------------------------------------------------------- checks: objectives
#: Frames and clip lengths of the objective checks' batches: clip 1 is padded (its backbone
#: frames end at 15, its aligned targets at 12: a teacher may cover fewer frames than the
#: backbone gives, and frames past ``targets.lengths`` hold no target).
_OBJ_FRAMES, _OBJ_DIM, _OBJ_LAYERS = 20, 8, 2
_BACKBONE_VALID, _TARGET_VALID = (20, 15), (20, 12)


def _target_infos(entry: Any, vocab_sizes: tuple[int, ...] = (16, 16)) -> list[Any]:
    """One :class:`TargetInfo` per target kind the objective accepts."""

    return [
        TargetInfo("discrete", len(vocab_sizes), 75.0, vocab_sizes) if kind == "discrete" else TargetInfo(kind, 6, 75.0)
        for kind in entry.attribute("accepts", ())
    ]


def _objective(entry: Any, info: Any) -> Any:
    torch.manual_seed(0)
    objective = _build(entry, hidden_dim=_OBJ_DIM, num_layers=_OBJ_LAYERS, target_info=info)
    _require(isinstance(objective, Objective), f"built a {type(objective).__name__}, not a mertlab.contracts.Objective")
    return objective


def _objective_inputs(info: Any, seed: int = 0, junk: float = 0.0) -> tuple[Any, Any, torch.Tensor]:
    """``(BackboneOutput, Targets, mask)`` of a padded batch as the training step gives them: the
    mask is never on backbone padding but may cover frames past ``targets.lengths``. ``junk``:
    the scale of the random values put into every padded frame (hidden states and targets;
    codes: random codes of the vocabulary)."""

    g = torch.Generator().manual_seed(seed)
    frames = torch.arange(_OBJ_FRAMES)
    backbone_padding = frames[None, :] >= torch.tensor(_BACKBONE_VALID)[:, None]
    target_padding = frames[None, :] >= torch.tensor(_TARGET_VALID)[:, None]
    hidden: list[torch.Tensor] = []
    for _ in range(_OBJ_LAYERS + 1):
        h = torch.randn(2, _OBJ_FRAMES, _OBJ_DIM, generator=torch.Generator().manual_seed(7 + len(hidden)))
        h = torch.where(backbone_padding[:, :, None], junk * torch.randn(h.shape, generator=g), h)
        hidden.append(h.requires_grad_(True))
    if info.kind == "discrete":
        fixed = torch.stack(
            [
                torch.randint(0, v, (2, _OBJ_FRAMES), generator=torch.Generator().manual_seed(3))
                for v in info.vocab_sizes
            ],
            -1,
        )
        fixed[0, 0] = torch.tensor(info.vocab_sizes) - 1  # every codebook's largest code occurs
        noise = torch.stack([torch.randint(0, v, (2, _OBJ_FRAMES), generator=g) for v in info.vocab_sizes], -1)
        values = torch.where(target_padding[:, :, None], noise if junk else torch.zeros_like(fixed), fixed)
    else:
        fixed = torch.randn(2, _OBJ_FRAMES, info.dim, generator=torch.Generator().manual_seed(3))
        values = torch.where(target_padding[:, :, None], junk * torch.randn(fixed.shape, generator=g), fixed)
    mask = (torch.rand(2, _OBJ_FRAMES, generator=torch.Generator().manual_seed(5)) < 0.5) & ~backbone_padding
    mask[1, _TARGET_VALID[1] : _BACKBONE_VALID[1]] = True  # masked frames past the targets' lengths
    out = BackboneOutput(tuple(hidden), backbone_padding, 75.0)
    return out, Targets(values, torch.tensor(_TARGET_VALID), info), mask


def _loss(objective: Any, out: Any, targets: Any, mask: torch.Tensor) -> Any:
    """The objective's output through the training loop's boundary check, finite required."""

    return check_objective_output(objective, objective(out, targets, mask), require_finite=True)


def _backward(loss: torch.Tensor, kind: str) -> None:
    """``loss.backward()``, or a contract violation saying why a loss has no graph."""
    _require(
        loss.requires_grad,
        f"({kind} targets) the loss is not connected to the hidden states (no grad_fn): do not "
        f".detach() or .item() it, or compute it under torch.no_grad()",
    )
    loss.backward()


def check_objective_loss(entry: Any) -> None:
    """A finite scalar loss with gradient to the features, ``family/key`` metric names with
    floating-point scalar values (the training loop's boundary check)."""
    for info in _target_infos(entry):
        objective = _objective(entry, info)
        out, targets, mask = _objective_inputs(info)
        result = _loss(objective, out, targets, mask)
        _backward(result.loss, info.kind)
        grad = out.hidden_states[-1].grad
        _require(
            grad is not None and bool(grad.abs().sum() > 0),
            f"({info.kind} targets) the loss has no gradient to the last hidden state",
        )


def check_objective_padding(entry: Any) -> None:
    """Frames past ``targets.lengths`` (no target: the teacher covered fewer frames than the
    backbone gives; the mask may cover them) and the backbone's padding frames do not change the
    loss: random junk there gives the loss of zeros there."""
    for info in _target_infos(entry):
        objective = _objective(entry, info)
        clean = _objective_inputs(info)
        junk = _objective_inputs(info, seed=1, junk=100.0)
        a, b = (_loss(objective, *inputs).loss.detach() for inputs in (clean, junk))
        _require(
            bool(torch.allclose(a, b, rtol=1e-4, atol=1e-5)),
            f"({info.kind} targets) the loss changes with what lies past targets.lengths / the backbone's padding "
            f"({float(a):.6g} vs {float(b):.6g}): leave out frames where targets.padding_mask or "
            "out.padding_mask is True",
        )


def check_objective_mask_extremes(entry: Any) -> None:
    """A batch with every valid frame masked and one with no frame masked both give a finite
    loss (no 0/0 when nothing is masked)."""
    for info in _target_infos(entry):
        objective = _objective(entry, info)
        out, targets, _ = _objective_inputs(info)
        for what, mask in (
            ("every frame masked", ~out.padding_mask),
            ("no frame masked", torch.zeros_like(out.padding_mask)),
        ):
            try:
                _loss(objective, out, targets, mask)
            except ObjectiveError as exc:
                raise ContractViolation(f"({info.kind} targets, {what}) {_without_label(exc, objective)}") from None


def check_objective_vocabularies(entry: Any) -> None:
    """Codebooks of different sizes (3, 17 and 300 codes), every largest code present: a finite loss."""
    if "discrete" not in entry.attribute("accepts", ()):
        raise CheckSkipped("accepts no discrete targets")

    info = TargetInfo("discrete", 3, 75.0, (3, 17, 300))
    objective = _objective(entry, info)
    _loss(objective, *_objective_inputs(info))


def check_objective_bf16(entry: Any) -> None:
    """Under bf16 autocast (``trainer.precision: bf16-mixed``), with bf16 hidden states: a finite
    floating-point scalar loss with gradient to the features."""
    for info in _target_infos(entry):
        objective = _objective(entry, info)
        out, targets, mask = _objective_inputs(info)
        half = dataclasses.replace(
            out, hidden_states=tuple(h.detach().bfloat16().requires_grad_() for h in out.hidden_states)
        )
        with torch.autocast("cpu", dtype=torch.bfloat16):
            result = _loss(objective, half, targets, mask)
        _backward(result.loss.float(), info.kind)
        grad = half.hidden_states[-1].grad
        _require(
            grad is not None and bool(grad.float().abs().sum() > 0), "under bf16 autocast the loss has no gradient"
        )


def _without_label(exc: Exception, objective: Any) -> str:
    return str(exc).removeprefix(objective_label(objective) + ": ")


def check_masking(entry: Any) -> None:
    """A ``[B, T]`` bool mask, never on padding, masking something where there is audio."""

    masking = _build(entry)
    _require(isinstance(masking, Masking), f"built a {type(masking).__name__}, not a mertlab.contracts.Masking")
    padding = torch.zeros(3, 100, dtype=torch.bool)
    padding[1, 60:] = True
    padding[2, 10:] = True
    mask = masking(padding, torch.Generator().manual_seed(0))
    _require(mask.shape == padding.shape and mask.dtype == torch.bool, f"mask must be bool {tuple(padding.shape)}")
    _require(not bool((mask & padding).any()), "the mask covers padding frames")
    _require(bool(mask[0].any()), "nothing was masked on a clip without padding")


def check_augmentation(entry: Any) -> None:
    """A new ``[B, S]`` tensor of the input's dtype, finite, padding left silent, the input
    untouched, the same result from the same generator seed."""

    augmentation = _build(entry)
    _require(
        isinstance(augmentation, Augmentation),
        f"built a {type(augmentation).__name__}, not a mertlab.contracts.Augmentation",
    )
    rate = 16000
    wav, lengths = _batch([contract_audio(0.5, rate, seed=s)[:n] for s, n in enumerate((8000, 6000, 3000))])
    before = wav.clone()
    out = augmentation(wav, lengths, torch.Generator().manual_seed(0))
    _require(
        isinstance(out, torch.Tensor) and out.shape == wav.shape and out.dtype == wav.dtype,
        f"must return a {wav.dtype} tensor of shape {tuple(wav.shape)}, "
        f"got {getattr(out, 'dtype', type(out).__name__)} "
        f"{tuple(getattr(out, 'shape', ()))}",
    )
    _require(torch.equal(wav, before), "changed its input in place (return a new tensor)")
    _require(bool(torch.isfinite(out).all()), "returned non-finite samples")
    padding = torch.arange(wav.shape[1])[None, :] >= lengths[:, None]
    _require(not bool(out[padding].any()), "put sound into padding")
    again = augmentation(wav, lengths, torch.Generator().manual_seed(0))
    _require(torch.equal(out, again), "two calls with the same generator seed differ")


def check_callback(entry: Any) -> None:
    """Builds into a ``lightning.Callback``."""
    import lightning as L

    callback = _build(entry)
    _require(isinstance(callback, L.Callback), f"built a {type(callback).__name__}, not a lightning.Callback")


#: The checks of each kind, in the order they run.
CHECKS: dict[str, dict[str, Callable[[Any], None]]] = {
    "teacher": {
        "registration": check_registration,
        "outputs": check_teacher_outputs,
        "determinism": check_teacher_determinism,
        "batching": check_teacher_batching,
        "padding": check_teacher_padding,
        "fingerprint": check_teacher_fingerprint,
        "cache_round_trip": check_teacher_cache_round_trip,
    },
    "backbone": {
        "registration": check_registration,
        "forward": check_backbone_forward,
        "determinism": check_backbone_determinism,
    },
    "objective": {
        "registration": check_registration,
        "loss": check_objective_loss,
        "padding": check_objective_padding,
        "mask_extremes": check_objective_mask_extremes,
        "vocabularies": check_objective_vocabularies,
        "bf16": check_objective_bf16,
    },
    "masking": {"registration": check_registration, "mask": check_masking},
    "augmentation": {"registration": check_registration, "augment": check_augmentation},
    "callback": {"registration": check_registration, "constructs": check_callback},
}


# --------------------------------------------------------------------------- running
def run_check(kind: str, name: str, check: str, registry: RegistryLike = None) -> None:
    """Run one check; raises :class:`ContractViolation` (one line naming the component and its
    distribution) or :class:`CheckSkipped`."""
    entry = _resolve(registry).get(kind, name)
    try:
        CHECKS[kind][check](entry)
    except CheckSkipped:
        raise
    except (ContractViolation, TeacherOutputError, ObjectiveError) as exc:
        message = str(exc)
        label = _label(entry)
        message = message[len(label) + 2 :] if message.startswith(label + ": ") else message
        raise ContractViolation(f"{label}: check '{check}': {message}") from None
    except MertlabError as exc:
        raise ContractViolation(f"{_label(entry)}: check '{check}': {exc}") from None
    except Exception as exc:  # noqa: BLE001 - a crash is a contract failure, reported on one line
        raise ContractViolation(f"{_label(entry)}: check '{check}' crashed: {type(exc).__name__}: {exc}") from exc


def run_contract_checks(kind: str, name: str, registry: RegistryLike = None) -> Iterator[CheckResult]:
    """Every check of ``kind`` on component ``name``, as results (for ``mertlab check-plugin``)."""
    for check in CHECKS[kind]:
        try:
            run_check(kind, name, check, registry)
        except CheckSkipped as exc:
            yield CheckResult(check, "skipped", str(exc))
        except ContractViolation as exc:
            yield CheckResult(check, "failed", str(exc))
        else:
            yield CheckResult(check, "passed")


def assert_contract(kind: str, name: str, check: str, registry: RegistryLike = None) -> None:
    """Inside a pytest test: run one check; a violation fails the test with its one-line message
    (no traceback), a check that does not apply skips it."""
    import pytest

    try:
        run_check(kind, name, check, registry)
    except CheckSkipped as exc:
        skipped: str | None = str(exc)
        failed = None
    except ContractViolation as exc:
        skipped, failed = None, str(exc)
    else:
        return
    if skipped is not None:
        pytest.skip(skipped)
    pytest.fail(failed or "", pytrace=False)


def contract_tests(kind: str, name: str, registry: RegistryLike = None) -> Callable[[str], None]:
    """A pytest test function running every check of ``kind`` on component ``name``
    (parametrized by check). Assign it to a ``test_*`` name in a test module."""
    import pytest

    if kind not in CHECKS:
        raise ValueError(f"kind must be one of {', '.join(CHECKS)}, got {kind!r}")

    @pytest.mark.parametrize("check", list(CHECKS[kind]))
    def test_contract(check: str) -> None:
        assert_contract(kind, name, check, registry)

    test_contract.__doc__ = f"mertlab contract checks of {kind} '{name}'."
    return test_contract


def all_contract_cases(registry: RegistryLike = None) -> list[tuple[str, str, str]]:
    """``(kind, name, check)`` of every check of every registered component."""
    return [(e.kind, e.name, check) for e in _resolve(registry).list() for check in CHECKS[e.kind]]


__all__ = [
    "CHECKS",
    "CheckResult",
    "assert_contract",
    "CheckSkipped",
    "ContractViolation",
    "all_contract_cases",
    "contract_audio",
    "contract_tests",
    "run_check",
    "run_contract_checks",
]
