"""Plugin discovery: built-ins and third-party packages load through the same hooks.

Built-in plugin modules are listed in :data:`DEFAULT_PLUGINS`; third-party ones come from the
``mertlab`` entry-point group. Set ``MERTLAB_DISABLE_AUTOLOAD=1`` to load only the built-ins
(reproducible runs); the variable is read when the plugin manager is created, not at import.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from importlib import metadata

import pluggy

from mertlab import hookspecs
from mertlab.errors import PluginError

ENTRY_POINT_GROUP = "mertlab"
DISABLE_AUTOLOAD_ENV = "MERTLAB_DISABLE_AUTOLOAD"

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


class MertlabPluginManager(pluggy.PluginManager):
    """A pluggy manager that remembers where each plugin came from."""

    def __init__(self) -> None:
        super().__init__("mertlab")
        self.add_hookspecs(hookspecs)
        self.sources: dict[str, PluginSource] = {}

    def register_source(self, plugin: object, source: PluginSource) -> None:
        self.register(plugin, name=source.plugin)
        self.sources[source.plugin] = source

    def source_of(self, plugin_name: str) -> PluginSource:
        return self.sources.get(plugin_name, PluginSource(plugin_name))


def autoload_disabled() -> bool:
    return os.environ.get(DISABLE_AUTOLOAD_ENV, "").strip().lower() not in ("", "0", "false", "no")


def load_entry_point_plugins(pm: MertlabPluginManager, group: str = ENTRY_POINT_GROUP) -> None:
    """Load every entry point of ``group`` (as ``pm.load_setuptools_entrypoints`` does) but
    turn an import failure into a :class:`PluginError` naming the distribution."""
    for dist in metadata.distributions():
        for ep in dist.entry_points:
            if ep.group != group or pm.get_plugin(ep.name) is not None or pm.is_blocked(ep.name):
                continue
            dist_name = dist.metadata["name"]
            try:
                plugin = ep.load()
            except Exception as exc:  # noqa: BLE001 - re-raised with context
                raise PluginError(
                    f"plugin '{ep.name}' ({ep.value}) from distribution '{dist_name} {dist.version}' "
                    f"failed to import: {type(exc).__name__}: {exc}; fix or uninstall it, or set "
                    f"{DISABLE_AUTOLOAD_ENV}=1 to start without third-party plugins"
                ) from exc
            pm.register_source(plugin, PluginSource(ep.name, dist_name, dist.version))


def create_plugin_manager(autoload: bool | None = None) -> MertlabPluginManager:
    """A fresh manager with the built-ins and (unless disabled) entry-point plugins loaded."""
    pm = MertlabPluginManager()
    for module_name in DEFAULT_PLUGINS:
        try:
            module = importlib.import_module(module_name)
        except Exception as exc:  # noqa: BLE001 - re-raised with context
            raise PluginError(f"built-in plugin '{module_name}' failed to import: {type(exc).__name__}: {exc}") from exc
        pm.register_source(module, PluginSource(module_name))
    if autoload is None:
        autoload = not autoload_disabled()
    if autoload:
        load_entry_point_plugins(pm)
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        name = pm.get_name(exc.plugin) or repr(exc.plugin)
        raise PluginError(f"plugin '{name}' ({pm.source_of(name).label}): {exc}") from exc
    return pm
