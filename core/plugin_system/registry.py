"""The component registry: kind -> {name: entry}, filled by the ``register_*`` hooks.

>>> from mertlab.plugin_system.registry import get_registry
>>> get_registry().list("teacher", "*enc*")        # wildcard listing, like timm.list_models
>>> get_registry().build("teacher", "cqt", {"n_bins": 84})
"""

from __future__ import annotations

import contextlib
import difflib
import fnmatch
import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Literal, get_args

from pydantic import BaseModel, ValidationError

from mertlab.errors import MertlabError, PluginError, UnknownComponentError
from mertlab.plugin_system.plugin_manager import (
    DISABLE_PLUGINS_ENV,
    MertlabPluginManager,
    PluginSource,
    SkippedPlugin,
    create_plugin_manager,
)

Kind = Literal["teacher", "backbone", "objective", "masking", "augmentation", "callback"]
KINDS: tuple[str, ...] = get_args(Kind)
#: hook name per kind
HOOKS: dict[str, str] = {
    "teacher": "register_teachers",
    "backbone": "register_backbones",
    "objective": "register_objectives",
    "masking": "register_maskings",
    "augmentation": "register_augmentations",
    "callback": "register_callbacks",
}


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


@dataclass(frozen=True)
class Entry:
    """One registered component: ``declared`` is its class or a :class:`LazyComponent`."""

    kind: str
    name: str
    declared: Any
    source: PluginSource

    @property
    def component(self) -> type:
        """The component class (imported now if it was registered lazily)."""
        if isinstance(self.declared, LazyComponent):
            return _load(self.declared, self.kind, self.source)
        return self.declared

    def attribute(self, name: str, default: Any = None) -> Any:
        """A class attribute (``target_kind``, ``accepts``, ``requires_fit``...) without importing
        a lazily registered implementation."""
        return getattr(self.declared, name, default)

    @property
    def summary(self) -> str:
        return getattr(self.declared, "summary", "") or ""

    @property
    def params_model(self) -> type[BaseModel]:
        return self.declared.Params

    def validate_params(self, params: dict[str, Any] | BaseModel | None) -> BaseModel:
        """Validate raw params against the component's ``Params`` (raises ``ValidationError``)."""
        if isinstance(params, self.params_model):
            return params
        return self.params_model.model_validate(params or {})

    def build(self, params: dict[str, Any] | BaseModel | None = None, **context: Any) -> Any:
        return self.component(self.validate_params(params), **context)


_LOADED: dict[int, type] = {}


def _load(declared: LazyComponent, kind: str, source: PluginSource) -> type:
    """Import a lazily registered class and check it carries what was declared."""
    if id(declared) in _LOADED:
        return _LOADED[id(declared)]
    where = f"plugin '{source.plugin}' ({source.label})"
    module_name, _, attr = declared.target.partition(":")
    try:
        component = getattr(importlib.import_module(module_name), attr)
    except Exception as exc:  # noqa: BLE001 - re-raised with context
        raise PluginError(
            f"{where}: {kind} '{declared.name}' ({declared.target}) failed to import: {type(exc).__name__}: {exc}; "
            f"fix or uninstall it, or disable it with {DISABLE_PLUGINS_ENV}={source.plugin}"
        ) from exc
    _check_component(kind, component, source)
    mismatched = [
        key
        for key in ("name", "summary", "Params", *declared.attributes)
        if getattr(component, key, None) != getattr(declared, key)
    ]
    if mismatched:
        raise PluginError(
            f"{where}: {kind} '{declared.name}': {declared.target} differs from its registration in "
            f"{', '.join(mismatched)}"
        )
    _COMPONENT_SOURCES[component] = source
    _LOADED[id(declared)] = component
    return component


#: The target kinds a teacher may declare and an objective may accept.
TARGET_KINDS: tuple[str, ...] = ("discrete", "continuous")


def _check_target_kind(component: type) -> str | None:
    kind = getattr(component, "target_kind", None)
    if kind not in TARGET_KINDS:
        return f"`target_kind` must be one of {', '.join(map(repr, TARGET_KINDS))}, got {kind!r}"
    return None


def _check_accepts(component: type) -> str | None:
    accepts = getattr(component, "accepts", None)
    if not isinstance(accepts, tuple) or not accepts or any(k not in TARGET_KINDS for k in accepts):
        return f"`accepts` must be a non-empty tuple of {', '.join(map(repr, TARGET_KINDS))}, got {accepts!r}"
    return None


#: Extra class attributes each kind's contract requires (see :mod:`mertlab.contracts`).
KIND_CHECKS: dict[str, tuple[Callable[[type], str | None], ...]] = {
    "teacher": (_check_target_kind,),
    "objective": (_check_accepts,),
}


def contract_problems(kind: str, component: Any) -> list[str]:
    """What ``component`` violates of the registration contract of ``kind`` (empty: nothing).

    A class with an identifier ``name``, a one-line non-empty ``summary``, a pydantic ``Params``
    whose every field has a default and a ``description``, plus the kind's own attributes
    (:data:`KIND_CHECKS`: a teacher's ``target_kind``, an objective's ``accepts``).
    """
    if not isinstance(component, (type, LazyComponent)):
        return [f"registered {component!r} as a {kind}; expected a class"]
    name = getattr(component, "name", None)
    if not isinstance(name, str) or not name:
        return [f"registered {component.__qualname__} as a {kind} without a string `name`"]
    what = f"{kind} '{name}'"
    problems = []
    if not name.isidentifier():
        problems.append(f"{what}: `name` must be a Python identifier (letters, digits, _), got {name!r}")
    summary = getattr(component, "summary", None)
    if not isinstance(summary, str) or not summary.strip() or "\n" in summary.strip():
        problems.append(f"{what}: `summary` must be a non-empty one-line string, got {summary!r}")
    params = getattr(component, "Params", None)
    if not (isinstance(params, type) and issubclass(params, BaseModel)):
        problems.append(
            f"{what}: `Params` must be a pydantic model (subclass mertlab.contracts.Params), got {params!r}"
        )
    else:
        for field_name, info in params.model_fields.items():
            if info.is_required():
                problems.append(f"{what}: Params field '{field_name}' has no default")
            if not (info.description or "").strip():
                problems.append(f"{what}: Params field '{field_name}' has no description (Field(..., description=...))")
    for check in KIND_CHECKS.get(kind, ()):
        problem = check(component)
        if problem:
            problems.append(f"{what}: {problem}")
    return problems


def _check_component(kind: str, component: Any, source: PluginSource) -> None:
    problems = contract_problems(kind, component)
    if problems:
        where = f"plugin '{source.plugin}' ({source.label})"
        raise PluginError(
            "\n".join(f"{where} {p}" if p.startswith("registered") else f"{where}: {p}" for p in problems)
        )


#: Where each registered component class came from (filled at registration).
_COMPONENT_SOURCES: dict[type, PluginSource] = {}


def component_source(component: type) -> PluginSource | None:
    """The plugin (and its distribution) that registered ``component``; None if no registry
    registers it (the process-wide one is built first if it was not, so the answer does not
    depend on what ran before)."""
    if component not in _COMPONENT_SOURCES:
        with contextlib.suppress(MertlabError):
            get_registry()
    return _COMPONENT_SOURCES.get(component)


def component_label(component: type, kind: str | None = None) -> str:
    """``teacher 'onset_flux' (my-plugin 0.1.0)``: how messages name a component and its origin."""
    kind = kind or next(
        (k for k, base in _kind_bases().items() if isinstance(component, type) and issubclass(component, base)),
        "component",
    )
    source = component_source(component)
    origin = source.label if source is not None else f"module {component.__module__}"
    return f"{kind} '{getattr(component, 'name', component.__qualname__)}' ({origin})"


def _kind_bases() -> dict[str, type]:
    from mertlab import contracts

    return {
        "teacher": contracts.Teacher,
        "backbone": contracts.Backbone,
        "objective": contracts.Objective,
        "masking": contracts.Masking,
        "augmentation": contracts.Augmentation,
    }


class Registry:
    """Registered components by kind, with their plugin of origin.

    Each plugin registers all its components or none: one whose ``register_*`` hook raises, that
    registers something breaking the registration contract, or a name an earlier plugin already
    registered (built-ins come first), is skipped as a whole with one warning naming it and its
    distribution (:meth:`MertlabPluginManager.skip`), and the other plugins' components stay.
    Looking up a name that is not registered mentions the skipped plugins.
    """

    def __init__(self, plugin_manager: MertlabPluginManager) -> None:
        self.plugin_manager = plugin_manager
        self._entries: dict[str, dict[str, Entry]] = {kind: {} for kind in KINDS}
        for plugin_name, source in list(plugin_manager.sources.items()):
            if plugin_manager.get_plugin(plugin_name) is None:
                continue
            try:
                staged = self._collect(plugin_name, source)
            except PluginError as exc:
                reason = "; ".join(
                    line.removeprefix(f"plugin '{source.plugin}' ({source.label})").lstrip(": ")
                    for line in str(exc).splitlines()
                )
                plugin_manager.skip(source, reason)
                continue
            except Exception as exc:  # noqa: BLE001 - a plugin's hook crashed: skip that plugin only
                plugin_manager.skip(
                    source, f"failed to register its components: {type(exc).__name__}: {' '.join(str(exc).split())}"
                )
                continue
            for entry in staged:
                self._entries[entry.kind][entry.name] = entry
                if isinstance(entry.declared, type):
                    _COMPONENT_SOURCES[entry.declared] = source

    def _collect(self, plugin_name: str, source: PluginSource) -> list[Entry]:
        """Every component the plugin registers (checked; nothing is added yet)."""
        staged: list[Entry] = []
        for kind, hook_name in HOOKS.items():
            for impl in getattr(self.plugin_manager.hook, hook_name).get_hookimpls():
                if impl.plugin_name == plugin_name:
                    impl.function(register=self._registrar(kind, source, staged))
        return staged

    def _registrar(self, kind: str, source: PluginSource, staged: list[Entry]):
        def register(component: type | LazyComponent) -> None:
            _check_component(kind, component, source)
            where = f"plugin '{source.plugin}' ({source.label})"
            if any(e.kind == kind and e.name == component.name for e in staged):
                raise PluginError(f"{where}: registers two {kind}s named '{component.name}'")
            existing = self._entries[kind].get(component.name)
            if existing is not None:
                raise PluginError(
                    f"{where}: registers a {kind} named '{component.name}', which plugin "
                    f"'{existing.source.plugin}' ({existing.source.label}) registers too; uninstall one, or "
                    f"disable one with {DISABLE_PLUGINS_ENV}={source.plugin}"
                )
            staged.append(Entry(kind, component.name, component, source))

        return register

    @property
    def skipped(self) -> dict[str, SkippedPlugin]:
        """Plugins not loaded (broken or disabled), by plugin name."""
        return self.plugin_manager.skipped

    def names(self, kind: str) -> list[str]:
        return sorted(self._entries[self._kind(kind)])

    def list(self, kind: str | None = None, pattern: str = "*") -> list[Entry]:
        """Entries of ``kind`` (all kinds if None) whose name matches the wildcard ``pattern``."""
        kinds = [self._kind(kind)] if kind else list(KINDS)
        return [
            entry
            for k in kinds
            for name, entry in sorted(self._entries[k].items())
            if fnmatch.fnmatchcase(name, pattern)
        ]

    def get(self, kind: str, name: str) -> Entry:
        entries = self._entries[self._kind(kind)]
        if name in entries:
            return entries[name]
        raise UnknownComponentError(unknown_name_message(kind, name, sorted(entries)) + self.skipped_note())

    def skipped_note(self) -> str:
        """``; not loaded: plugin 'x' (dist 1.0) failed to import: ...`` (empty when none was skipped)."""
        if not self.skipped:
            return ""
        return "; not loaded: " + "; ".join(s.message for s in self.skipped.values())

    def build(self, kind: str, name: str, params: dict[str, Any] | BaseModel | None = None, **context: Any) -> Any:
        """Validate ``params`` and construct component ``name`` of ``kind``."""
        entry = self.get(kind, name)
        try:
            validated = entry.validate_params(params)
        except ValidationError as exc:
            from mertlab.experiment.spec import validation_problems

            raise UnknownComponentError(
                "\n".join(
                    f"{kind} '{name}' params{'.' + path if path else ''}: {message}"
                    for path, message in validation_problems(exc)
                )
            ) from exc
        return entry.component(validated, **context)

    @staticmethod
    def _kind(kind: str) -> str:
        if kind not in KINDS:
            raise UnknownComponentError(unknown_name_message("kind", kind, list(KINDS)))
        return kind


def unknown_name_message(kind: str, name: str, available: list[str]) -> str:
    """``unknown teacher 'encodek'; did you mean 'encodec'? available: cqt, encodec``."""
    close = difflib.get_close_matches(name, available, n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ";"
    listing = ", ".join(available) if available else "(none installed)"
    return f"unknown {kind} '{name}'{hint} available: {listing}"


@lru_cache(maxsize=1)
def get_registry() -> Registry:
    """The process-wide registry (built on first use; :func:`reset_registry` forgets it)."""
    return Registry(create_plugin_manager())


def reset_registry() -> None:
    get_registry.cache_clear()
