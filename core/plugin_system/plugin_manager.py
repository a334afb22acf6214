"""Plugin discovery: built-ins and third-party packages load through the same hooks.

Built-in plugin modules are listed in :data:`DEFAULT_PLUGINS`; third-party ones come from the
``mertlab`` entry-point group. Plugins are isolated from each other: one that fails to import,
implements a hook mertlab does not have, or fails to register its components (see
:class:`~mertlab.plugin_system.registry.Registry`) is skipped with one warning naming it and
its distribution, and the others load; a command that needs a skipped plugin's component fails
with that warning's message.

Environment (read when a plugin manager is created, not at import):

* ``MERTLAB_DISABLE_AUTOLOAD=1`` loads only the built-ins (reproducible runs);
* ``MERTLAB_DISABLE_PLUGINS=name,...`` skips the named plugins (entry-point names, built-in
  module names or distribution names), like pytest's ``-p no:NAME``; the CLI's global
  ``--disable-plugin NAME`` option adds to it.
"""

from __future__ import annotations

import difflib
import importlib
import logging
import os
from dataclasses import dataclass
from importlib import metadata

import pluggy

from mertlab import hookspecs
from mertlab.errors import PluginError

ENTRY_POINT_GROUP = "mertlab"
DISABLE_AUTOLOAD_ENV = "MERTLAB_DISABLE_AUTOLOAD"
DISABLE_PLUGINS_ENV = "MERTLAB_DISABLE_PLUGINS"
log = logging.getLogger(__name__)

#: Built-in plugin modules, registered exactly like third-party plugins.
DEFAULT_PLUGINS: tuple[str, ...] = (
    "mertlab.plugins.callbacks.stability_plugin",
    "mertlab.plugins.objectives.masked_prediction",
    "mertlab.plugins.objectives.masked_regression",
    "mertlab.plugins.objectives.linear_classification",
    "mertlab.plugins.maskings.span",
    "mertlab.plugins.augmentations.mixup",
    "mertlab.plugins.backbones.transformer",
    "mertlab.plugins.backbones.conformer",
    "mertlab.plugins.teachers.encodec",
    "mertlab.plugins.teachers.dac",
    "mertlab.plugins.teachers.cqt",
    "mertlab.plugins.teachers.kmeans",
    "mertlab.plugins.teachers.bestrq",
    "mertlab.plugins.teachers.melrvq",
    "mertlab.plugins.teachers.crepe",
    "mertlab.plugins.teachers.hidden",
)

#: The hooks a plugin may implement (the functions of :mod:`mertlab.hookspecs`).
HOOK_NAMES: tuple[str, ...] = tuple(
    name for name in vars(hookspecs) if name.startswith("register_") and callable(getattr(hookspecs, name))
)


@dataclass(frozen=True)
class PluginSource:
    """Where a plugin came from: ``builtin`` or a distribution name and version."""

    plugin: str
    distribution: str | None = None
    version: str | None = None

    @property
    def label(self) -> str:
        if self.distribution is None:
            return "builtin"
        return f"{self.distribution} {self.version}"

    @property
    def provider(self) -> tuple[str, str]:
        """``(distribution, version)`` that ships the plugin; built-ins ship with mertlab."""
        if self.distribution is None:
            from mertlab import __version__

            return ("mertlab", __version__)
        return (self.distribution, str(self.version))

    def names(self) -> set[str]:
        """The names ``MERTLAB_DISABLE_PLUGINS`` and ``requires_plugins`` may use for it."""
        return {self.plugin} | ({self.distribution} if self.distribution else set())


@dataclass(frozen=True)
class SkippedPlugin:
    """A plugin that was not loaded: ``reason`` is why (its message names it and its origin);
    ``disabled``: the user asked for it (no warning)."""

    source: PluginSource
    reason: str
    disabled: bool = False

    @property
    def message(self) -> str:
        return f"plugin '{self.source.plugin}' ({self.source.label}): {self.reason}"


class MertlabPluginManager(pluggy.PluginManager):
    """A pluggy manager that remembers where each plugin came from and which were skipped."""

    def __init__(self, disabled: frozenset[str] = frozenset()) -> None:
        super().__init__("mertlab")
        self.add_hookspecs(hookspecs)
        self.sources: dict[str, PluginSource] = {}
        #: Plugins not loaded (broken or disabled), by plugin name, in the order met.
        self.skipped: dict[str, SkippedPlugin] = {}
        #: Names to skip (``MERTLAB_DISABLE_PLUGINS``), matched against :meth:`PluginSource.names`.
        self.disabled = frozenset(disabled)

    def register_source(self, plugin: object, source: PluginSource) -> None:
        """Register ``plugin``; :class:`PluginError` naming it when a hook it implements does not
        exist (with the closest hook name) or has the wrong arguments."""
        try:
            self.register(plugin, name=source.plugin)
        except pluggy.PluginValidationError as exc:
            raise PluginError(f"plugin '{source.plugin}' ({source.label}): {exc}") from None
        unknown = [caller.name for caller in self.get_hookcallers(plugin) or () if not caller.has_spec()]
        if unknown:
            self.unregister(plugin)
            raise PluginError(f"plugin '{source.plugin}' ({source.label}): {unknown_hook_message(unknown[0])}")
        self.sources[source.plugin] = source

    def source_of(self, plugin_name: str) -> PluginSource:
        return self.sources.get(plugin_name, PluginSource(plugin_name))

    def is_disabled(self, source: PluginSource) -> bool:
        return bool(self.disabled & source.names())

    def skip(self, source: PluginSource, reason: str, disabled: bool = False) -> SkippedPlugin:
        """Record ``source`` as not loaded (unregistering it if it was) and warn, unless the
        user disabled it."""
        if self.get_plugin(source.plugin) is not None:
            self.unregister(name=source.plugin)
        self.sources.pop(source.plugin, None)
        skipped = SkippedPlugin(source, reason, disabled)
        self.skipped[source.plugin] = skipped
        if not disabled:
            log.warning(
                "%s; skipped (the other plugins load; fix or uninstall it, or set %s=%s to silence this)",
                skipped.message,
                DISABLE_PLUGINS_ENV,
                source.plugin,
            )
        return skipped

    def load(self, source: PluginSource, load: object) -> None:
        """Import (``load()``) and register one plugin; a failure skips it with a warning."""
        if self.is_disabled(source):
            self.skip(source, f"disabled ({DISABLE_PLUGINS_ENV} or --disable-plugin)", disabled=True)
            return
        try:
            plugin = load()
        except Exception as exc:  # noqa: BLE001 - one broken plugin must not stop the others
            self.skip(source, f"failed to import: {type(exc).__name__}: {' '.join(str(exc).split())}")
            return
        try:
            self.register_source(plugin, source)
        except PluginError as exc:
            self.skip(source, str(exc).removeprefix(f"plugin '{source.plugin}' ({source.label})").lstrip(": "))

    def unmatched_disabled(self) -> list[str]:
        """Names in :attr:`disabled` that match no plugin found (misspelled, or not installed)."""
        known = set().union(*(s.names() for s in (*self.sources.values(), *(k.source for k in self.skipped.values()))))
        return sorted(self.disabled - known)

    def all_plugin_names(self) -> list[str]:
        """Every plugin and distribution name found, loaded or skipped."""
        sources = (*self.sources.values(), *(k.source for k in self.skipped.values()))
        return sorted(set().union(*(s.names() for s in sources)))


def unknown_hook_message(hook: str) -> str:
    """``'register_teacher' is not a mertlab hook; did you mean 'register_teachers'? ...``."""
    close = difflib.get_close_matches(hook, HOOK_NAMES, n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return f"'{hook}' is not a mertlab hook{hint} (hooks: {', '.join(HOOK_NAMES)})"


def autoload_disabled() -> bool:
    return os.environ.get(DISABLE_AUTOLOAD_ENV, "").strip().lower() not in ("", "0", "false", "no")


def disabled_plugins() -> frozenset[str]:
    """The plugin names of ``MERTLAB_DISABLE_PLUGINS`` (comma- or space-separated)."""
    return frozenset(name for name in os.environ.get(DISABLE_PLUGINS_ENV, "").replace(",", " ").split() if name)


def load_entry_point_plugins(pm: MertlabPluginManager, group: str = ENTRY_POINT_GROUP) -> None:
    """Load every entry point of ``group`` (as ``pm.load_setuptools_entrypoints`` does); one that
    fails to import or register is skipped with a warning naming its distribution."""
    for dist in metadata.distributions():
        for ep in dist.entry_points:
            if ep.group != group or pm.get_plugin(ep.name) is not None or ep.name in pm.skipped:
                continue
            pm.load(PluginSource(ep.name, dist.metadata["name"], dist.version), ep.load)


def create_plugin_manager(
    autoload: bool | None = None, disabled: frozenset[str] | set[str] | None = None
) -> MertlabPluginManager:
    """A fresh manager with the built-ins and (unless disabled) entry-point plugins loaded.

    ``disabled``: plugin names to skip (default: ``MERTLAB_DISABLE_PLUGINS``)."""
    pm = MertlabPluginManager(frozenset(disabled_plugins() if disabled is None else disabled))
    for module_name in DEFAULT_PLUGINS:
        pm.load(PluginSource(module_name), lambda name=module_name: importlib.import_module(name))
    if autoload is None:
        autoload = not autoload_disabled()
    if not autoload:
        return pm
    load_entry_point_plugins(pm)
    for name in pm.unmatched_disabled():
        close = difflib.get_close_matches(name, pm.all_plugin_names(), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        log.warning("%s: no plugin named '%s'%s", DISABLE_PLUGINS_ENV, name, hint)
    return pm
