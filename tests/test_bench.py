"""Every bench/ script runs end to end with ``--quick`` and prints at least one ``RATIO`` line.

No timing is asserted (machines are noisy; the ratios at --quick sizes mean nothing): this only
keeps the scripts working. Two scripts run at a time, each in its own process.
"""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
SCRIPTS = sorted(p.name for p in BENCH.glob("*.py") if not p.name.startswith("_"))


def run_quick(name: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        [sys.executable, str(BENCH / name), "--quick"],
        cwd=BENCH.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def results() -> dict[str, subprocess.CompletedProcess]:
    with ThreadPoolExecutor(2) as pool:
        return dict(zip(SCRIPTS, pool.map(run_quick, SCRIPTS), strict=True))


def test_every_script_is_covered():
    expected = {
        "backbone_step.py",
        "conformer_step.py",
        "dataloader.py",
        "gpu_check.py",
        "melrvq_fit.py",
        "mfu.py",
        "startup.py",
        "target_cache.py",
        "teachers.py",
    }
    assert expected <= set(SCRIPTS)


# The first case runs every script (the fixture): up to 300 s each, two at a time.
@pytest.mark.integration
@pytest.mark.timeout(300 * len(SCRIPTS) // 2)
@pytest.mark.parametrize("name", SCRIPTS)
def test_quick_run_prints_a_ratio(results, name):
    done = results[name]
    assert done.returncode == 0, f"{name} --quick failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    ratios = [line for line in done.stdout.splitlines() if line.startswith("RATIO ")]
    assert ratios, f"{name} --quick printed no RATIO line:\n{done.stdout[-2000:]}"
    assert all("x (" in line for line in ratios), ratios


@pytest.mark.parametrize("name", SCRIPTS)
def test_docstring_gives_the_command(name):
    text = (BENCH / name).read_text()
    assert f"bench/{name}" in text.split('"""')[1], f"{name}: its docstring should show the command that runs it"
