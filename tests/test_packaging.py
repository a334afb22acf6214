"""One import namespace from core/ + plugins/, in editable and in wheel installs."""
from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_editable_layout_maps_plugins_into_mertlab():
    import mertlab
    import mertlab.plugins.teachers as teachers

    assert Path(mertlab.__file__).parent == REPO / "core"
    assert Path(teachers.__file__).parent == REPO / "plugins" / "teachers"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(REPO)],
                   check=True, capture_output=True)
    return next(out.glob("mertlab-*.whl"))


def test_wheel_contains_every_python_module(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {f"mertlab/{p.relative_to(REPO / 'core')}" for p in (REPO / "core").rglob("*.py")}
    expected |= {f"mertlab/plugins/{p.relative_to(REPO / 'plugins')}" for p in (REPO / "plugins").rglob("*.py")}
    assert expected <= names, f"missing from wheel: {sorted(expected - names)}"
    assert any(n.endswith("entry_points.txt") for n in names)


def test_wheel_install_imports_and_runs(wheel, tmp_path):
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True, capture_output=True)
    code = ("import mertlab, mertlab.plugins.teachers, mertlab.registry as r; "
            "print(mertlab.__file__); print(len(r.get_registry().list()))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={"PYTHONPATH": str(target), "MERTLAB_DISABLE_AUTOLOAD": "1", "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0].startswith(str(target))
