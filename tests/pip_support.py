"""Installing a package into a folder for a test: the test's Python sees it through PYTHONPATH."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def pip_install_into(target: Path, source: Path) -> Path:
    """``pip install --target target source`` (a project folder or a wheel) without its
    dependencies or build isolation: no network, the virtual environment untouched. Returns ``target``."""
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "-q", "--target", str(target)]
        + [str(source)],
        check=True,
        capture_output=True,
    )
    return target
