"""The example third-party package really installs and is discovered through its entry point."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pip_support import pip_install_into

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "mertlab-example-teacher"


@pytest.fixture(scope="module")
def installed_example(tmp_path_factory) -> Path:
    return pip_install_into(tmp_path_factory.mktemp("example-site"), EXAMPLE)


def mertlab_cli(site: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k != "MERTLAB_DISABLE_AUTOLOAD"}
    environ.update(PYTHONPATH=str(site), **env)
    return subprocess.run([sys.executable, "-m", "mertlab", *args], capture_output=True, text=True, env=environ)


def test_installed_example_is_listed_with_its_distribution(installed_example):
    proc = mertlab_cli(installed_example, "plugins", "--kind", "teacher", "loud*")
    assert proc.returncode == 0, proc.stderr
    row = proc.stdout.splitlines()[2].split()
    assert row[:4] == ["loudness", "teacher", "mertlab-example-teacher", "0.1.0"]


def test_disabling_autoload_hides_the_example(installed_example):
    proc = mertlab_cli(installed_example, "plugins", "loud*", MERTLAB_DISABLE_AUTOLOAD="1")
    assert proc.returncode == 0 and "loudness" not in proc.stdout


def test_example_teacher_produces_loudness_targets(installed_example, monkeypatch):
    monkeypatch.syspath_prepend(str(installed_example))
    from mertlab.plugin_system.registry import get_registry

    teacher = get_registry().build("teacher", "loudness", {"hop_length": 100})
    wav = torch.zeros(2, 1000)
    wav[0, 500:] = 1.0
    out = teacher.targets(wav, torch.tensor([1000, 600]))
    assert out.values.shape == (2, 10, 1) and out.lengths.tolist() == [10, 6]
    assert out.values[0, 7, 0] > out.values[0, 2, 0] + 5  # loud half is louder than the silent half
