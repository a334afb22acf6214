"""`mertlab plugins install|uninstall` into the running environment, offline.

The environment is a throw-away venv layered on the test environment (a ``.pth`` file adds its
site-packages, so mertlab, torch and pip are importable from it): what pip installs there and
removes again never touches the test environment itself."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from mertlab.plugin_system.installer import pinned_constraints

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "mertlab-example-teacher"
OFFLINE = ("--no-index", "--no-build-isolation")


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Path:
    """A venv without pip of its own, seeing the test environment's packages."""
    root = tmp_path_factory.mktemp("plugin-venv") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True)
    purelib = Path(
        subprocess.run(
            [str(root / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    parent = sysconfig.get_paths()["purelib"]
    (purelib / "parent_env.pth").write_text(f"import site; site.addsitedir({parent!r})\n")
    return root


def mertlab(venv: Path, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MERTLAB_", "PYTHON"))}
    env["PIP_NO_INPUT"] = "1"
    return subprocess.run(
        [str(venv / "bin" / "python"), "-m", "mertlab", *args], capture_output=True, text=True, env=env, cwd=cwd
    )


def installed(venv: Path) -> set[str]:
    """The distributions in the venv's own site-packages."""
    return {p.name.split("-")[0] for p in venv.glob("lib/python*/site-packages/*.dist-info")}


@pytest.mark.integration
def test_install_a_local_package_and_an_editable_scaffold_then_uninstall_them(venv, tmp_path, monkeypatch):
    from mertlab.plugin_system.scaffold import next_steps, write_package

    monkeypatch.chdir(tmp_path)
    package = write_package("teacher", "onset_flux", None)
    assert "install:  mertlab plugins install -e ./mertlab-onset-flux " in next_steps("teacher", "onset_flux", package)
    proc = mertlab(venv, "plugins", "install", str(EXAMPLE), *OFFLINE)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "installed mertlab-example-teacher 0.1.0: teacher 'loudness'" in proc.stdout  # as a new process sees it
    proc = mertlab(venv, "plugins", "install", "-e", "mertlab-onset-flux", *OFFLINE, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "installed mertlab-onset-flux 0.1.0: teacher 'onset_flux'" in proc.stdout
    assert {"mertlab_example_teacher", "mertlab_onset_flux"} <= installed(venv)
    proc = mertlab(venv, "plugins", "uninstall", "loudness", "mertlab-onset-flux")  # entry-point / distribution
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.split("\n")[:2] == ["uninstalled mertlab-example-teacher", "uninstalled mertlab-onset-flux"]
    assert not {"mertlab_example_teacher", "mertlab_onset_flux"} & installed(venv)


def test_bad_names_and_paths_are_one_clear_error(tmp_path):
    from mertlab.errors import MertlabError
    from mertlab.plugin_system.installer import install_plugin, uninstall_plugins

    with pytest.raises(MertlabError, match="no installed plugin package 'torch'"):  # only plugin packages
        uninstall_plugins(["torch"])
    with pytest.raises(MertlabError, match="--editable: .* is not a folder"):
        install_plugin(str(tmp_path / "nowhere"), editable=True)
    with pytest.raises(MertlabError) as err:  # pip's own reason, on one line
        install_plugin(str(tmp_path / "nowhere"), pip_args=OFFLINE)
    assert str(err.value).startswith("plugins install ") and "pip failed" in str(err.value)
    assert len(str(err.value).splitlines()) == 1


def test_constraints_pin_the_installed_torch_and_the_example_does_not_ask_for_torch():
    from importlib import metadata

    pins = pinned_constraints()
    assert f"torch=={metadata.version('torch')}" in pins and f"torchaudio=={metadata.version('torchaudio')}" in pins
    assert any(p.startswith("mertlab==") for p in pins)
    assert '\ndependencies = ["mertlab"]\n' in (EXAMPLE / "pyproject.toml").read_text()
