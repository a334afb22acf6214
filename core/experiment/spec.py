"""Experiment specs: YAML -> validated, fully resolved :class:`ExperimentSpec`.

Loading goes: read YAML -> merge ``base:`` files (deep merge; ``null`` deletes a key) -> apply
``-o dotted.key=value`` overrides (values parsed as YAML) -> validate the outer structure ->
validate each component's ``params`` against its plugin's ``Params`` -> cross-reference checks.
Every problem becomes a ``path.to.field: message`` line of one :class:`SpecError`.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from mertlab.errors import MertlabError, SpecError, validation_problems
from mertlab.plugin_system.registry import get_registry

#: What a spec ``name`` may be: it names a folder (``<output_dir>/<name>``) and an experiment.
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
#: Seeds numpy accepts (``np.random.seed``): 0 .. 2**32 - 1.
MAX_SEED = 2**32 - 1
#: Accelerator names Lightning knows without a plugin ("gpu" is its alias of cuda).
KNOWN_ACCELERATORS = ("auto", "cpu", "cuda", "gpu", "mps", "tpu")
#: Deepest nesting of lists and mappings a spec (file, override value or data) may have: the
#: deepest real spec is about 5 levels (sweep.variants.<name>.<key>: [values]).
MAX_NESTING = 32
#: Most values (scalars, lists and mappings, counting each YAML alias use) a spec may hold.
MAX_VALUES = 100_000


def _reject_nul(value: Any) -> Any:
    """NUL characters cannot be in file paths, MLflow names or tags: reject them anywhere."""
    if isinstance(value, str) and "\x00" in value:
        raise ValueError("contains a NUL character (\\x00)")
    if isinstance(value, dict):
        for k, v in value.items():
            _reject_nul(k)
            _reject_nul(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            _reject_nul(v)
    return value


def _numeric_not_bool(annotation: Any) -> bool:
    """The field holds numbers (int/float, optionally None) and never a boolean."""
    args = get_args(annotation) or (annotation,)
    return bool(args) and bool not in args and any(a in (int, float) for a in args)


class StrictModel(BaseModel):
    """Unknown keys, NaN/infinite numbers, booleans for numbers and NUL characters are errors."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_number(cls, value: Any, info: ValidationInfo) -> Any:
        # pydantic's lax mode reads `seed: true` as 1: a typo or a misplaced flag, never meant
        if isinstance(value, bool) and info.field_name is not None:
            field = cls.model_fields.get(info.field_name)
            if field is not None and _numeric_not_bool(field.annotation):
                raise ValueError(f"expected a number, got the boolean {str(value).lower()}")
        return value

    @field_validator("*", mode="after")
    @classmethod
    def _no_nul(cls, value: Any) -> Any:
        return _reject_nul(value)


class ComponentSpec(StrictModel):
    """A registered component and its params (validated against the plugin's ``Params``)."""

    name: str = Field(description="Registered component name (see `mertlab plugins`).")
    params: dict[str, Any] = Field(default_factory=dict, description="The component's params.")


class ObjectiveSpec(ComponentSpec):
    """An objective, the teacher whose targets it learns, and its named weight in the total loss."""

    teacher: str = Field(description="Alias (key under `teachers`) of the teacher providing targets.")
    weight: float = Field(1.0, ge=0, description="Weight of this objective in loss/total.")


class DataSpec(StrictModel):
    path: str = Field(
        "data/demo",
        description="Audio folder (scanned recursively) or a manifest file listing audio paths; or shards written by "
        "`mertlab data shard` (their folder, or the object-store URL they were copied to, e.g. s3://bucket/shards).",
    )
    shard_cache: str | None = Field(
        None,
        description="Local folder where chunks of shards streamed from an object store are cached "
        "(default: litdata's, $LITDATA_CACHE_DIR or ~/.lightning/chunks).",
    )
    generate_demo: bool = Field(False, description="If `path` has no audio, write the generated demo set there first.")
    crop_seconds: float = Field(5.0, gt=0, description="Random crop length in seconds (MERT: 5 s).")
    batch_size: int = Field(8, ge=1, description="Clips per device and micro-batch.")
    global_batch_size: int | None = Field(
        None,
        ge=1,
        description="Optional check: must equal batch_size x trainer.devices x trainer.num_nodes x "
        "trainer.accumulate_grad_batches (the clips per optimizer step), e.g. to keep a recipe's batch when "
        "moving it to another cluster.",
    )
    num_workers: int = Field(0, ge=0, description="DataLoader worker processes.")
    val_fraction: float = Field(0.1, ge=0, lt=1, description="Fraction of files held out for validation.")
    extensions: list[str] = Field(default_factory=lambda: [".wav", ".flac", ".ogg", ".mp3"])
    target_cache: str | None = Field(
        None,
        description="Directory of precomputed targets (`mertlab targets build`); null computes targets on the fly.",
    )
    build_target_cache: bool = Field(
        True,
        description="With target_cache set, `mertlab train` first computes the targets of files not cached yet "
        "(as `mertlab targets build` does); false makes missing entries an error instead.",
    )


class AugmentationSpec(ComponentSpec):
    """An augmentation of the student input, under its alias in ``augment``.

    ``name`` defaults to the alias, and the params may be written directly under the alias when
    there is no ``params`` key: ``augment: {mixup: {probability: 0.5}}`` is
    ``augment: {mixup: {name: mixup, params: {probability: 0.5}}}``.
    """

    name: str | None = Field(  # type: ignore[assignment]  # None until ExperimentSpec fills in the alias
        None, description="Registered augmentation name (see `mertlab plugins`); default: the alias."
    )


def _augmentation_entry(entry: Any) -> Any:
    """The short form of an ``augment`` entry (no ``params`` key) -> ``{name?, params}``."""
    if not isinstance(entry, dict) or "params" in entry:
        return entry
    params = {k: v for k, v in entry.items() if k != "name"}
    return {**({"name": entry["name"]} if "name" in entry else {}), "params": params}


class OptimSpec(StrictModel):
    name: Literal["adam", "adamw"] = "adamw"
    lr: float = Field(5e-4, gt=0, description="Peak learning rate (MERT-95M: 5e-4).")
    betas: tuple[float, float] = Field((0.9, 0.98), description="Adam betas, each in [0, 1).")
    eps: float = Field(1e-6, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    warmup_steps: int = Field(0, ge=0)
    schedule: Literal["linear", "cosine", "constant"] = "linear"
    min_lr_ratio: float = Field(0.0, ge=0, le=1, description="Final lr as a fraction of the peak.")
    grad_clip: float = Field(10.0, ge=0, description="Max global grad norm (MERT-95M: 10, 330M: 1); 0 disables.")

    @field_validator("betas")
    @classmethod
    def _betas_in_range(cls, betas: tuple[float, float]) -> tuple[float, float]:
        if not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"each beta must be in [0, 1), got {list(betas)}")
        return betas


class TrainerSpec(StrictModel):
    max_steps: int = Field(1000, ge=1)
    precision: Literal["32", "bf16-mixed", "16-mixed"] = Field(
        "32", description="Lightning precision: 32 (fp32), bf16-mixed or 16-mixed (fp16 autocast + loss scaling)."
    )
    accumulate_grad_batches: int = Field(1, ge=1)
    val_every_n_steps: int = Field(200, ge=1)
    limit_val_batches: int = Field(4, ge=0)
    log_every_n_steps: int = Field(10, ge=1)
    output_dir: str = Field("runs", description="Checkpoints go to <output_dir>/<name>/.")
    accelerator: str = Field(
        "auto", description="Lightning accelerator: auto, cpu, cuda (gpu), mps, tpu, or one a plugin registers."
    )
    devices: int = Field(1, ge=1, description="Devices (processes) per node.")
    num_nodes: int = Field(
        1, ge=1, description="Machines; the launcher (SLURM srun, torchrun) starts devices x num_nodes processes."
    )
    strategy: Literal["auto", "ddp", "fsdp"] = Field(
        "auto",
        description="auto (one device: none; several: ddp), ddp (replicated model, gradient all-reduce), or fsdp "
        "(parameters, gradients and optimizer state sharded per backbone layer; sharded checkpoints).",
    )
    activation_checkpointing: bool = Field(
        False,
        description="With strategy fsdp: recompute each backbone layer in backward instead of storing its activations.",
    )
    max_consecutive_nonfinite: int = Field(
        50,
        ge=0,
        description="Stop the run (checkpoint saved, run FAILED, one clear error) after this many consecutive "
        "non-finite steps; 0 never stops.",
    )
    undo_nonfinite_updates: bool = Field(
        True,
        description="Undo an optimizer update that leaves a parameter NaN/inf (counted as a skipped non-finite step); "
        "keeps a copy of the parameters and optimizer state (Adam: 3x the parameters' memory); false saves it.",
    )

    @field_validator("accelerator")
    @classmethod
    def _known_accelerator(cls, value: str) -> str:
        if value in KNOWN_ACCELERATORS:
            return value
        from lightning.pytorch.accelerators import AcceleratorRegistry  # plugins may register more

        known = sorted(set(KNOWN_ACCELERATORS) | set(AcceleratorRegistry.available_accelerators()))
        if value not in known:
            raise ValueError(f"unknown accelerator {value!r}; use one of {', '.join(known)}")
        return value

    @field_validator("precision", mode="before")
    @classmethod
    def _precision_as_text(cls, value: object) -> object:
        # `-o trainer.precision=32` parses as the integer 32
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


class TrackingSpec(StrictModel):
    tracking_uri: str | None = Field(
        None, description="MLflow tracking URI; null uses $MLFLOW_TRACKING_URI or sqlite:///mlflow.db."
    )
    experiment: str | None = Field(None, description="MLflow experiment; null uses the spec name.")
    run_name: str | None = None
    tags: dict[str, str] = Field(default_factory=dict)
    connect_timeout: float = Field(
        30.0,
        gt=0,
        description="Seconds to wait for the tracking store at start (then one clear error, before any work); "
        "mid-run outages never stop training (metrics are buffered and retried).",
    )


class ProbeSpec(StrictModel):
    """Downstream probes of the trained model: ``mertlab train`` probes its final checkpoint,
    ``mertlab sweep`` every finished child (see docs/probing.md)."""

    tasks: list[str] = Field(
        min_length=1,
        description=(
            "Task CSVs, task YAMLs or class-folder directories (as `mertlab probe` takes them), relative "
            "to the working directory like data.path."
        ),
    )
    layers: str | list[int] = Field(
        "all", description="Layers probed one by one: all, last, '6,12' or a list (0 = encoder input)."
    )
    window_seconds: float = Field(
        5.0, gt=0, description="Long audio is cut into windows of this length (MERT crops: 5 s)."
    )
    baselines: list[str] = Field(
        default_factory=list, description="Handcrafted baselines probed alongside: mfcc, chroma, cqt."
    )
    random_init: bool = Field(False, description="Also probe an untrained backbone of the same architecture.")
    weighted: bool = Field(True, description="Also fit the probe on a learnable weighted sum of all layers.")
    max_epochs: int = Field(200, gt=0, description="Epoch limit of each probe (MARBLE early stopping).")
    patience: int = Field(10, gt=0, description="Early-stopping patience in epochs.")
    seed: int = Field(0, description="Seed of the probes (and of the random-init backbone).")
    seeds: int = Field(
        1,
        ge=1,
        description="Probe seeds (seed, seed+1, ...): more than 1 refits every probe per seed and reports the "
        "spread of the best probe's test score.",
    )
    batch_size: int = Field(8, ge=1, description="Windows per forward pass during feature extraction.")
    device: str = Field("auto", description="auto (cuda if available), cpu, cuda, cuda:1...")
    cache_dir: str | None = Field(
        ".mertlab-cache/features",
        description="Feature cache folder (relative to the working directory); null disables the cache.",
    )

    @field_validator("layers")
    @classmethod
    def _check_layers(cls, layers: str | list[int]) -> str | list[int]:
        if isinstance(layers, str) and layers not in ("all", "last"):
            try:
                [int(part) for part in layers.split(",") if part.strip()]
            except ValueError:
                raise ValueError(
                    f"expected all, last, comma-separated layer numbers or a list, got {layers!r}"
                ) from None
        return layers

    @field_validator("baselines")
    @classmethod
    def _check_baselines(cls, baselines: list[str]) -> list[str]:
        try:
            return parse_baselines(baselines)
        except MertlabError as exc:
            raise ValueError(str(exc).removeprefix("baselines: ")) from None


#: The handcrafted baselines a probe can score (:mod:`mertlab.probe.baselines` computes them).
BASELINE_NAMES = ("mfcc", "chroma", "cqt")


def parse_baselines(names: str | Sequence[str] | None) -> list[str]:
    """``"mfcc,cqt"`` or a list -> checked, de-duplicated names (``None``/empty: none)."""
    if not names:
        return []
    items = [n.strip() for n in names.split(",")] if isinstance(names, str) else [str(n).strip() for n in names]
    out: list[str] = []
    for name in items:
        if name not in BASELINE_NAMES:
            raise MertlabError(f"baselines: unknown baseline {name!r} (use {', '.join(BASELINE_NAMES)})")
        if name not in out:
            out.append(name)
    return out


#: Keys a sweep may not vary: every child must land in its parent's store, experiment and
#: output folder, and a child spec carries no sweep of its own.
SWEEP_FIXED_KEYS = ("name", "sweep", "tracking.tracking_uri", "tracking.experiment", "tracking.run_name")
_DOTTED_KEY = re.compile(r"^[A-Za-z0-9_\-]+(\.[A-Za-z0-9_\-]+)*$")
_VARIANT_NAME = re.compile(r"^[A-Za-z0-9_.+\-]+$")


def _nested_keys(keys: list[str]) -> tuple[str, str] | None:
    """The first two dotted ``keys`` of which one lies inside the other (``optim``, ``optim.lr``)."""
    for outer in keys:
        for inner in keys:
            if inner.startswith(outer + "."):
                return outer, inner
    return None


def _check_sweep_key(key: str) -> None:
    if not _DOTTED_KEY.match(key):
        raise ValueError(f"'{key}' is not a dotted spec key (e.g. optim.lr)")
    for fixed in SWEEP_FIXED_KEYS:
        if key == fixed or key.startswith(fixed + ".") or fixed.startswith(key + "."):
            raise ValueError(
                f"a sweep cannot vary '{key}': every child shares the parent's name, tracking store and experiment"
            )


class SweepSpec(StrictModel):
    """Variants of one spec, run as MLflow child runs under one parent (``mertlab sweep``).

    ``grid`` is a cartesian product; ``variants`` are named sets of overrides; with both, every
    variant is crossed with every grid point. Keys are dotted spec paths as for ``-o``; a
    ``null`` value removes the key (e.g. drop a teacher and its objective).
    """

    grid: dict[str, list[Any]] = Field(
        default_factory=dict,
        description=(
            "Dotted key -> list of values; the product of all lists is swept (e.g. optim.lr: [5.0e-4, 1.0e-3])."
        ),
    )
    variants: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="Variant name -> {dotted key: value} overrides (an empty mapping is the unchanged base spec).",
    )

    @field_validator("grid")
    @classmethod
    def _check_grid(cls, grid: dict[str, list[Any]]) -> dict[str, list[Any]]:
        for key, values in grid.items():
            _check_sweep_key(key)
            if not values:
                raise ValueError(f"grid key '{key}' has an empty list of values")
            rendered = [yaml.safe_dump(v, default_flow_style=True) for v in values]
            if len(set(rendered)) != len(rendered):
                raise ValueError(f"grid key '{key}' lists the same value twice")
        return grid

    @field_validator("variants")
    @classmethod
    def _check_variants(cls, variants: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        for name, overrides in variants.items():
            if not _VARIANT_NAME.match(name):
                raise ValueError(f"variant name '{name}': use letters, digits and _ . + - only")
            for key in overrides:
                _check_sweep_key(key)
            nested = _nested_keys(list(overrides))
            if nested:
                raise ValueError(
                    f"variant '{name}' sets both {nested[0]} and {nested[1]}, one inside the other: the result "
                    "would depend on their order; set only one"
                )
        return variants

    @model_validator(mode="after")
    def _not_empty_no_overlap(self) -> SweepSpec:
        if not self.grid and not self.variants:
            raise ValueError("a sweep needs `grid` and/or `variants`")
        for name, overrides in self.variants.items():
            both = sorted(
                {key for key in overrides for varied in self.grid if _nested_keys([key, varied]) or key == varied}
            )
            if both:
                raise ValueError(f"variant '{name}' sets {', '.join(both)}, which the grid also varies")
        return self


class ExperimentSpec(StrictModel):
    """A complete, resolved experiment."""

    name: str = Field(
        description="Experiment name: letters, digits, '.', '_' and '-' (not first), at most 100; "
        "names the folder <trainer.output_dir>/<name> and the MLflow experiment by default."
    )
    description: str = ""
    seed: int = Field(0, ge=0, le=MAX_SEED, description="Seed of everything random (numpy's range: 0 .. 2**32-1).")
    requires_plugins: list[str] = Field(
        default_factory=list, description="Plugin or distribution names that must be installed."
    )
    data: DataSpec = Field(default_factory=DataSpec)
    backbone: ComponentSpec
    teachers: dict[str, ComponentSpec] = Field(min_length=1)
    objectives: dict[str, ObjectiveSpec] = Field(min_length=1)
    feature_penalty: float = Field(0.0, ge=0, description="Weight of the L2 penalty on extractor features (MERT: 10).")
    masking: ComponentSpec = Field(default_factory=lambda: ComponentSpec(name="span"))
    augment: dict[str, AugmentationSpec] = Field(
        default_factory=lambda: {"mixup": AugmentationSpec(name="mixup")},
        description="Augmentations of the student input by alias, applied in order in training steps; each "
        "`{name, params}` (name defaults to the alias) or the params alone (default: MERT's mixup at "
        "probability 0.5; `augment: {mixup: null}` or `augment: {}` removes it).",
    )
    optim: OptimSpec = Field(default_factory=OptimSpec)
    trainer: TrainerSpec = Field(default_factory=TrainerSpec)
    tracking: TrackingSpec = Field(default_factory=TrackingSpec)
    callbacks: dict[str, ComponentSpec] = Field(
        default_factory=lambda: {"stability": ComponentSpec(name="stability")},
        description=(
            "Training callbacks by alias (default: the stability monitor; `callbacks: {stability: null}` removes it)."
        ),
    )
    sweep: SweepSpec | None = Field(
        None, description="Optional variants of this spec for `mertlab sweep` (one MLflow child run each)."
    )
    probe: ProbeSpec | None = Field(
        None, description="Optional downstream probes of the final checkpoint (`-o probe=null` removes them)."
    )

    @field_validator("augment", mode="before")
    @classmethod
    def _augment_short_form(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            return value
        return {alias: _augmentation_entry(entry) for alias, entry in value.items() if entry is not None}

    @field_validator("augment")
    @classmethod
    def _augment_name_defaults_to_alias(cls, value: dict[str, AugmentationSpec]) -> dict[str, AugmentationSpec]:
        for alias, augmentation in value.items():
            if augmentation.name is None:
                augmentation.name = alias
        return value

    @field_validator("name")
    @classmethod
    def _name_is_a_slug(cls, name: str) -> str:
        if not NAME_PATTERN.match(name):
            raise ValueError(
                f"{name!r} is not a valid name: use letters, digits, '.', '_' and '-' (not first; at most 100), "
                "e.g. my-ablation; it names the run folder under trainer.output_dir"
            )
        return name


# --------------------------------------------------------------------------- YAML + merging
def read_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML mapping from ``path``; a missing or unreadable file, bytes that are not UTF-8, bad
    YAML, nesting deeper than :data:`MAX_NESTING` or a non-mapping -> SpecError."""
    path = Path(path)
    if not path.is_file():
        raise SpecError([("", f"no such spec file (looked for {path.resolve()})")], source=str(path))
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise SpecError([("", f"cannot read the spec file ({exc.strerror or exc})")], source=str(path)) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        bad = raw[exc.start : exc.start + 1].hex()
        raise SpecError(
            [("", f"not UTF-8 text: byte 0x{bad} at offset {exc.start} (a spec is a UTF-8 YAML file)")],
            source=str(path),
        ) from None
    data = parse_yaml(text, "", str(path))
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SpecError([("", f"expected a mapping at the top level, got {type(data).__name__}")], source=str(path))
    return data


class _SpecLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key written twice in one mapping (PyYAML keeps the last
    silently, so a second ``lr:`` would override the first unseen). Keys merged in with ``<<:``
    may still be overridden, as YAML intends."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, yaml.ScalarNode):
                continue
            key = self.construct_object(key_node)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (first on line {seen[key] + 1})", key_node.start_mark
                )
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep)


def parse_yaml(text: str, field: str = "", source: str | None = None) -> Any:
    """``text`` parsed as YAML (safe types only) and checked by :func:`check_structure`; errors
    are one :class:`SpecError` line naming ``field`` (and ``source``)."""
    if _flow_depth_above(text, 4 * MAX_NESTING):  # PyYAML's scanner is quadratic in it: fail fast
        raise SpecError([(field, _too_deep())], source=source)
    try:
        data = yaml.load(text, Loader=_SpecLoader)  # noqa: S506 -- a SafeLoader
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise SpecError([(field, f"malformed YAML: {where}{problem}")], source=source) from None
    except RecursionError:  # PyYAML composes nested collections recursively
        raise SpecError([(field, _too_deep())], source=source) from None
    check_structure(data, field, source)
    return data


def _flow_depth_above(text: str, limit: int) -> bool:
    """Whether ``[``/``{`` brackets nest deeper than ``limit`` in ``text`` (quotes not parsed:
    ``limit`` is well above :data:`MAX_NESTING`, so a bracket inside a string rarely matters)."""
    if text.count("[") + text.count("{") <= limit:
        return False
    depth = 0
    for char in text:
        if char in "[{":
            depth += 1
            if depth > limit:
                return True
        elif char in "]}" and depth:
            depth -= 1
    return False


def _too_deep() -> str:
    return f"nested deeper than {MAX_NESTING} levels of lists/mappings (the limit of a spec)"


def check_structure(data: Any, field: str = "", source: str | None = None) -> None:
    """Nesting of at most :data:`MAX_NESTING` levels and at most :data:`MAX_VALUES` values
    (YAML aliases counted at each use), checked without recursion; else a SpecError naming the
    field where the limit is passed."""
    stack: list[tuple[Any, int, str]] = [(data, 0, field)]
    seen = 0
    while stack:
        node, depth, where = stack.pop()
        seen += 1
        if seen > MAX_VALUES:
            raise SpecError([(field, f"holds more than {MAX_VALUES} values (YAML aliases count at each use)")], source)
        if isinstance(node, dict):
            children = [(v, f"{where}.{k}" if where else str(k)) for k, v in node.items()]
        elif isinstance(node, (list, tuple)):
            children = [(v, f"{where}[{i}]") for i, v in enumerate(node)]
        else:
            continue
        if depth >= MAX_NESTING:
            head = where.split("[", 1)[0].split(".")[:3]
            raise SpecError([(".".join(head), _too_deep())], source)
        stack.extend((child, depth + 1, path) for child, path in children)


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Recursively merge ``override`` into a copy of ``base``; a ``None`` value deletes the key."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def read_with_bases(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The spec at ``path`` with its ``base:`` file(s) merged underneath (relative to ``path``)."""
    path = Path(path).resolve() if Path(path).is_file() else Path(path)
    if path in _seen:
        chain = " -> ".join(str(p) for p in (*_seen, path))
        raise SpecError([("base", f"inheritance cycle: {chain}")], source=str(_seen[0]))
    data = read_yaml(path)
    bases = data.pop("base", None)
    if bases is None:
        return deep_merge({}, data)  # a null value means "unset": the default applies
    if isinstance(bases, str):
        bases = [bases]
    if not (isinstance(bases, list) and all(isinstance(b, str) for b in bases)):
        raise SpecError([("base", "expected a file path or a list of file paths")], source=str(path))
    merged: dict[str, Any] = {}
    for base in bases:
        base_path = Path(base) if Path(base).is_absolute() else path.parent / base
        if not base_path.is_file():
            raise SpecError([("base", f"no such base spec {base!r} (looked for {base_path})")], source=str(path))
        merged = deep_merge(merged, read_with_bases(base_path, (*_seen, path)))
    return deep_merge(merged, data)


def apply_overrides(data: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """Apply ``dotted.key=value`` overrides (value parsed as YAML; ``null`` deletes the key)."""
    out = copy.deepcopy(data)
    for override in overrides:
        key, sep, raw = override.partition("=")
        key = key.strip()
        if not sep or not key:
            raise SpecError([("", f"override {override!r}: expected KEY=VALUE, e.g. optim.lr=1e-4")])
        try:
            value = parse_yaml(raw, key) if raw.strip() else ""
        except SpecError as exc:
            problem = exc.problems[0][1]
            if problem.startswith("malformed YAML"):
                detail = problem.removeprefix("malformed YAML: ")
                problem = f"override value {raw[:80]!r} is not valid YAML ({detail})"
            raise SpecError([(key, problem)]) from None
        parts = key.split(".")
        if not all(part.strip() for part in parts):
            raise SpecError(
                [("", f"override {override!r}: KEY must be dotted field names without an empty part, e.g. optim.lr")]
            )
        node = out
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                where = ".".join(parts[: i + 1])
                raise SpecError(
                    [(key, f"cannot override inside {where}, which is a {type(child).__name__}, not a mapping")]
                )
            node = child
        if value is None:
            node.pop(parts[-1], None)
        else:
            node[parts[-1]] = value
    return out


# --------------------------------------------------------------------------- resolution
def resolve_spec(data: dict[str, Any], source: str | None = None, registry: Any = None) -> ExperimentSpec:
    """Validate raw spec data in two stages and return the fully resolved spec."""
    check_structure(data, source=source)
    try:
        spec = ExperimentSpec.model_validate(data)
    except ValidationError as exc:
        raise SpecError(validation_problems(exc), source=source) from None

    if registry is None:
        registry = get_registry()
    problems: list[tuple[str, str]] = []
    problems += _missing_plugins(spec.requires_plugins, registry)

    def check(kind: str, path: str, component: ComponentSpec) -> Any:
        try:
            entry = registry.get(kind, component.name)
        except MertlabError as exc:
            problems.append((f"{path}.name", str(exc)))
            return None
        try:
            component.params = entry.validate_params(component.params).model_dump(mode="json")
        except ValidationError as exc:
            problems.extend(validation_problems(exc, prefix=f"{path}.params"))
        except Exception as exc:  # noqa: BLE001 - a plugin validator that raised TypeError etc. on odd input
            problems.append((f"{path}.params", f"invalid params ({type(exc).__name__}: {exc})"))
        return entry

    check("backbone", "backbone", spec.backbone)
    check("masking", "masking", spec.masking)
    for alias, augmentation in spec.augment.items():
        check("augmentation", f"augment.{alias}", augmentation)
    teacher_entries = {alias: check("teacher", f"teachers.{alias}", t) for alias, t in spec.teachers.items()}
    for alias, cb in spec.callbacks.items():
        check("callback", f"callbacks.{alias}", cb)
    for alias, objective in spec.objectives.items():
        entry = check("objective", f"objectives.{alias}", objective)
        if objective.teacher not in spec.teachers:
            known = ", ".join(sorted(spec.teachers)) or "(none)"
            problems.append(
                (
                    f"objectives.{alias}.teacher",
                    f"no teacher alias '{objective.teacher}' in `teachers` (defined: {known})",
                )
            )
            continue
        teacher = teacher_entries.get(objective.teacher)
        if entry is not None and teacher is not None:
            kind = _target_kind(teacher, spec.teachers[objective.teacher].params)
            if kind not in entry.attribute("accepts", ()):
                problems.append(
                    (
                        f"objectives.{alias}.teacher",
                        f"objective '{objective.name}' needs {' or '.join(entry.attribute('accepts', ()))} targets, "
                        f"but teacher '{objective.teacher}' ({teacher.name}) gives {kind} targets",
                    )
                )
    problems += _global_batch_problems(spec)
    if spec.objectives and all(objective.weight == 0 for objective in spec.objectives.values()):
        problems.append(
            (
                "objectives",
                "every objective has weight 0, so loss/total is 0 and nothing would learn; give at least one a "
                "weight above 0 (a weight of 0 leaves one objective out of the loss)",
            )
        )
    if problems:
        raise SpecError(problems, source=source)
    return spec


def global_batch_size(spec: ExperimentSpec) -> int:
    """Clips per optimizer step: per-device batch x devices x nodes x accumulation."""
    t = spec.trainer
    return spec.data.batch_size * t.devices * t.num_nodes * t.accumulate_grad_batches


def _global_batch_problems(spec: ExperimentSpec) -> list[tuple[str, str]]:
    wanted, t = spec.data.global_batch_size, spec.trainer
    if wanted is None or wanted == global_batch_size(spec):
        return []
    return [
        (
            "data.global_batch_size",
            (
                f"{wanted} clips per step expected, but data.batch_size {spec.data.batch_size} x trainer.devices "
                f"{t.devices} "
                f"x trainer.num_nodes {t.num_nodes} x trainer.accumulate_grad_batches {t.accumulate_grad_batches} = "
                f"{global_batch_size(spec)}; change one of them"
            ),
        )
    ]


def _target_kind(entry: Any, params: dict[str, Any]) -> str:
    """The kind of targets teacher ``entry`` gives with ``params`` (its class's kind when the
    params are invalid: that problem is reported on its own)."""
    kind_for = entry.attribute("kind_for")
    if kind_for is None:
        return entry.attribute("target_kind")
    try:
        return kind_for(entry.validate_params(params))
    except ValidationError:
        return entry.attribute("target_kind")


def _missing_plugins(required: list[str], registry: Any) -> list[tuple[str, str]]:
    pm = registry.plugin_manager
    have = set().union(*(s.names() for s in pm.sources.values()))
    skipped = {name: s for s in getattr(pm, "skipped", {}).values() for name in s.source.names()}
    problems = []
    for name in required:
        if name in have:
            continue
        if name in skipped:
            problems.append(
                ("requires_plugins", f"plugin '{name}' is required but not loaded: {skipped[name].message}")
            )
            continue
        close = difflib.get_close_matches(name, sorted(have | set(skipped)), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        problems.append(
            (
                "requires_plugins",
                f"plugin '{name}' is required but not installed{hint} (installed: {', '.join(sorted(have))})",
            )
        )
    return problems


def load_spec(path: str | Path, overrides: list[str] | tuple[str, ...] = (), registry: Any = None) -> ExperimentSpec:
    """Read, merge, override and validate the spec at ``path``."""
    data = read_with_bases(path)
    try:
        data = apply_overrides(data, overrides)
    except SpecError as exc:
        raise SpecError(exc.problems, source=str(path)) from None
    return resolve_spec(data, source=str(path), registry=registry)


def dump_spec(spec: ExperimentSpec) -> str:
    """The resolved spec as YAML; :func:`load_spec` of it gives an equal spec."""
    return yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False, default_flow_style=False)


#: Spec sections that do not change what a run trains: where it is tracked, the sweep block and
#: the probe section (which only changes what is measured after training).
UNTRAINED_SECTIONS = ("tracking", "sweep", "probe")


def spec_fingerprint(data: dict[str, Any]) -> str:
    """Fingerprint (16 hex digits) of what a run trains, from a resolved spec's JSON dump
    (``spec.model_dump(mode="json")``, as checkpoints store it); :data:`UNTRAINED_SECTIONS` are
    left out."""
    kept = {k: v for k, v in data.items() if k not in UNTRAINED_SECTIONS}
    return hashlib.sha256(json.dumps(kept, sort_keys=True).encode()).hexdigest()[:16]
