"""``mertlab plugins install|uninstall``: plugin packages in the running environment.

Like ``llm install``: pip runs with the interpreter running mertlab (``sys.executable -m pip``),
so the plugin lands where mertlab will find it, and with constraints that pin what is already
installed of ``torch``, ``torchaudio`` and ``mertlab`` itself (the semantics of the repository's
``constraints.txt``): a plugin never makes pip fetch another (multi-GB) torch build or replace
the running mertlab -- a plugin whose requirements conflict with them fails to install with
pip's message instead.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from mertlab.errors import MertlabError, PluginError
from mertlab.plugin_system.plugin_manager import ENTRY_POINT_GROUP

#: Distributions pinned to their installed version while a plugin installs.
PINNED: tuple[str, ...] = ("torch", "torchaudio", "mertlab")


@dataclass(frozen=True)
class InstalledPlugin:
    """A distribution ``plugins install`` installed, and what mertlab finds in it afterwards."""

    distribution: str
    version: str
    components: list[tuple[str, str]] = field(default_factory=list)  # (kind, name)
    problems: list[str] = field(default_factory=list)  # why its plugins were skipped


def normalise(name: str) -> str:
    """A distribution name as pip compares them (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def pinned_constraints() -> list[str]:
    """``name==version`` of each of :data:`PINNED` that is installed."""
    pins = []
    for name in PINNED:
        try:
            pins.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            continue
    return pins


def _pip(args: list[str], what: str) -> subprocess.CompletedProcess:
    """``python -m pip ARGS`` in the running environment; a failure is one error with pip's reason."""
    proc = subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        output = proc.stderr + proc.stdout
        if "No module named pip" in output:
            raise MertlabError(f"{what}: pip is not installed in this environment ({sys.executable})")
        errors = [line.strip() for line in output.splitlines() if line.strip().startswith("ERROR:")]
        reason = " ".join(errors) or " ".join(output.strip().splitlines()[-3:])
        raise MertlabError(f"{what}: pip failed (exit {proc.returncode}): {reason}")
    return proc


def install_plugin(
    target: str, editable: bool = False, pip_args: tuple[str, ...] | list[str] = ()
) -> list[InstalledPlugin]:
    """Install ``target`` (a package requirement, a local folder or a wheel/sdist) with pip into
    the running environment, with :func:`pinned_constraints`; ``editable``: ``pip install -e``
    (a local folder you keep editing). ``pip_args`` go to pip as given (e.g. ``--no-index``).
    Returns each distribution asked for, with the components it registers (checked in a fresh
    process, as the next ``mertlab`` command will see them)."""
    local = Path(target).expanduser()
    if editable and not local.is_dir():
        raise MertlabError(
            f"plugins install --editable: {target} is not a folder (editable installs need a source tree)"
        )
    spec = str(local.resolve()) if local.exists() else target
    with tempfile.TemporaryDirectory(prefix="mertlab-install-") as tmp:
        constraints = Path(tmp) / "constraints.txt"
        constraints.write_text("\n".join(pinned_constraints()) + "\n")
        report = Path(tmp) / "report.json"
        args = ["install", "-c", str(constraints), "--report", str(report), *pip_args]
        args += ["-e", spec] if editable else [spec]
        _pip(args, f"plugins install {target}")
        try:
            items = json.loads(report.read_text()).get("install", [])
        except (OSError, ValueError):
            items = []
    requested = [i["metadata"] for i in items if i.get("requested") and isinstance(i.get("metadata"), dict)]
    if not requested:  # already installed at that version: pip installed nothing
        return []
    return inspect_distributions([(m["name"], str(m.get("version", "?"))) for m in requested])


_INSPECT = """
import json, logging, sys
logging.disable(logging.WARNING)
from mertlab.plugin_system.registry import get_registry
names = set(json.loads(sys.argv[1]))
norm = lambda n: __import__("re").sub(r"[-_.]+", "-", n).lower()
registry = get_registry()
found = {n: {"components": [], "problems": []} for n in names}
for e in registry.list():
    d = e.source.distribution
    if d and norm(d) in names:
        found[norm(d)]["components"].append([e.kind, e.name])
for s in registry.skipped.values():
    d = s.source.distribution
    if d and norm(d) in names and not s.disabled:
        found[norm(d)]["problems"].append(s.message)
print(json.dumps(found))
"""


def inspect_distributions(distributions: list[tuple[str, str]]) -> list[InstalledPlugin]:
    """The components each distribution registers, seen from a fresh ``python`` process."""
    names = [normalise(name) for name, _ in distributions]
    proc = subprocess.run([sys.executable, "-c", _INSPECT, json.dumps(names)], capture_output=True, text=True)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise PluginError(f"plugins install: installed, but loading the plugins failed: {last}")
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    return [
        InstalledPlugin(
            name, version, [tuple(c) for c in found[normalise(name)]["components"]], found[normalise(name)]["problems"]
        )
        for name, version in distributions
    ]


def plugin_distributions() -> dict[str, tuple[str, list[str]]]:
    """``{normalised distribution name: (name as published, [its mertlab entry-point names])}``
    of every installed distribution with a ``mertlab`` entry point (mertlab itself excluded)."""
    found: dict[str, tuple[str, list[str]]] = {}
    for dist in metadata.distributions():
        eps = [ep.name for ep in dist.entry_points if ep.group == ENTRY_POINT_GROUP]
        name = dist.metadata["name"]
        if eps and name and normalise(name) != "mertlab":
            found.setdefault(normalise(name), (name, eps))
    return found


def uninstall_plugins(names: list[str] | tuple[str, ...]) -> list[str]:
    """Uninstall the plugin distributions ``names`` (each its distribution name or one of its
    ``mertlab`` entry-point names) from the running environment with one pip call; returns the
    distributions. Only distributions that provide mertlab plugins can be uninstalled this way:
    every name is checked before anything is removed."""
    import difflib

    plugins = plugin_distributions()
    by_entry_point = {ep: dist for dist, (_, eps) in plugins.items() for ep in eps}
    found = []
    for name in names:
        dist = normalise(name) if normalise(name) in plugins else by_entry_point.get(name)
        if dist is None:
            candidates = sorted({plugins[d][0] for d in plugins} | set(by_entry_point))
            close = difflib.get_close_matches(name, candidates, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ";"
            listing = ", ".join(candidates) or "(none)"
            raise MertlabError(f"plugins uninstall: no installed plugin package '{name}'{hint} installed: {listing}")
        found.append(plugins[dist][0])
    found = list(dict.fromkeys(found))
    _pip(["uninstall", "-y", *found], f"plugins uninstall {' '.join(names)}")
    return found
