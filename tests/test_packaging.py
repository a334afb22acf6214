"""One import namespace from core/ + plugins/, in editable and in wheel installs."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from pip_support import pip_install_into

REPO = Path(__file__).resolve().parents[1]


def test_editable_layout_maps_plugins_into_mertlab():
    import mertlab
    import mertlab.plugins.teachers as teachers

    assert Path(mertlab.__file__).parent == REPO / "core"
    assert Path(teachers.__file__).parent == REPO / "plugins" / "teachers"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(REPO)],
        check=True,
        capture_output=True,
    )
    return next(out.glob("mertlab-*.whl"))


@pytest.mark.integration
def test_wheel_contains_every_python_module(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {f"mertlab/{p.relative_to(REPO / 'core')}" for p in (REPO / "core").rglob("*.py")}
    expected |= {f"mertlab/plugins/{p.relative_to(REPO / 'plugins')}" for p in (REPO / "plugins").rglob("*.py")}
    assert expected <= names, f"missing from wheel: {sorted(expected - names)}"
    assert any(n.endswith("entry_points.txt") for n in names)


@pytest.mark.integration
def test_wheel_install_imports_and_runs(wheel, tmp_path):
    target = pip_install_into(tmp_path / "site", wheel)
    code = (
        "import mertlab, mertlab.plugins.teachers, mertlab.plugin_system.registry as r; "
        "print(mertlab.__file__); print(len(r.get_registry().list()))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(target), "MERTLAB_DISABLE_AUTOLOAD": "1", "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0].startswith(str(target))


def _imported_top_level_names(folder: Path) -> dict[str, str]:
    """Top-level module names imported anywhere under ``folder`` -> one file importing it."""
    import ast

    found: dict[str, str] = {}
    for path in sorted(folder.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                found.setdefault(name.split(".")[0], str(path.relative_to(REPO)))
    return found


#: Imported only by modules their host program loads: pytest imports mertlab's pytest11 plugin.
RUN_BY_THEIR_HOST = {"pytest"}


def test_every_imported_package_is_a_declared_dependency():
    """What core/ and plugins/ import at run time is in [project.dependencies] (or the standard
    library), so `pip install mertlab` alone gives a working package."""
    import importlib.metadata as md
    import re

    import tomllib

    declared = {
        re.split(r"[<>=!~\[; ]", req, maxsplit=1)[0].lower().replace("_", "-")
        for req in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    }
    providers = md.packages_distributions()
    imported = {**_imported_top_level_names(REPO / "core"), **_imported_top_level_names(REPO / "plugins")}
    undeclared = {
        name: where
        for name, where in imported.items()
        if name not in sys.stdlib_module_names
        and name not in {"mertlab", "__future__"} | RUN_BY_THEIR_HOST
        and not {d.lower().replace("_", "-") for d in providers.get(name, [name])} & declared
    }
    assert not undeclared, f"imported but not in [project.dependencies]: {undeclared}"


@pytest.mark.integration
def test_every_module_of_the_wheel_imports_over_the_locked_environment(wheel, tmp_path):
    """The wheel alone (--no-deps) on top of the pinned environment: every module imports."""
    target = pip_install_into(tmp_path / "site", wheel)
    modules = sorted(
        ".".join(p.relative_to(target).with_suffix("").parts).removesuffix(".__init__")
        for p in (target / "mertlab").rglob("*.py")
        if p.name != "__main__.py"  # importing it runs the CLI
    )
    code = (
        "import importlib, sys\nfor m in sys.argv[1:]:\n    importlib.import_module(m)\nprint('ok', len(sys.argv) - 1)"
    )
    env = {**os.environ, "PYTHONPATH": str(target), "MERTLAB_DISABLE_AUTOLOAD": "1"}
    proc = subprocess.run([sys.executable, "-c", code, *modules], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["ok", str(len(modules))]


def test_no_machine_paths_or_files_outside_the_repository_are_cited():
    """Docs and code cite papers and public configs, never a file outside this repository or a
    path of one machine (tracked text files only)."""
    import re

    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True)
    if tracked.returncode != 0:
        pytest.skip("not a git checkout")
    # the forbidden prefixes, spelled in pieces so this file does not match itself
    forbidden = [
        "/" + "work/",
        "/" + r"home/\w",
        "/" + r"Users/\w",
        "/" + "root/",
        r"[A-Z]:\\" + "Users",
        r"\.\./" + "shared/",
        r"\b" + "shared/" + "REFERENCE",
        r"(?<![\w$}])/" + "shared/",
    ]
    pattern = re.compile(r"(?<![\w.])(" + "|".join(forbidden) + ")")
    hits = []
    for name in tracked.stdout.split():
        path = REPO / name
        if path.suffix not in {".py", ".md", ".yaml", ".yml", ".toml", ".txt", ".cfg", ""} or not path.is_file():
            continue
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if pattern.search(line):
                hits.append(f"{name}:{number}: {line.strip()[:100]}")
    assert not hits, "\n".join(hits)
