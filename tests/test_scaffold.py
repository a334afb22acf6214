"""`mertlab new` writes packages that install, pass their generated contract tests and train."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from mertlab.cli import main
from mertlab.plugin_system.scaffold import package_files
from pip_support import pip_install_into


def run(*args: str, site: Path, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("MERTLAB_DISABLE_AUTOLOAD", "PYTHONPATH")}
    env.update(PYTHONPATH=str(site), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, cwd=cwd)


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> tuple[Path, Path]:
    """The three generated packages (`mertlab new`), pip-installed into one --target folder
    (no deps, no network; the venv is untouched)."""
    root = tmp_path_factory.mktemp("scaffold")
    site = root / "site"
    for kind in ("teacher", "backbone", "objective"):
        assert main(["new", kind, f"demo_{kind}", str(root / f"demo-{kind}")]) == 0
        pip_install_into(site, root / f"demo-{kind}")
    return root, site


@pytest.mark.integration
def test_generated_packages_pass_their_own_contract_tests(generated):
    root, site = generated
    tests = [str(root / f"demo-{kind}" / "tests") for kind in ("teacher", "backbone", "objective")]
    proc = run("-m", "pytest", "-q", "-p", "no:cacheprovider", *tests, site=site, cwd=root)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # 7 teacher + 3 backbone + 6 objective checks; the scaffold's objective regresses continuous
    # targets, so the unequal-vocabularies check (discrete targets only) skips
    assert "15 passed, 1 skipped" in proc.stdout, proc.stdout
    listing = run("-m", "mertlab", "plugins", "demo_*", site=site, cwd=root)
    assert sorted(line.split()[:3] for line in listing.stdout.splitlines()[2:]) == [
        ["demo_backbone", "backbone", "mertlab-demo-backbone"],
        ["demo_objective", "objective", "mertlab-demo-objective"],
        ["demo_teacher", "teacher", "mertlab-demo-teacher"],
    ], listing.stdout + listing.stderr


@pytest.mark.integration
def test_tiny_training_run_with_the_generated_components_logs_their_loss(generated, demo_dir, tracking_uri):
    root, site = generated
    spec = root / "spec.yaml"
    spec.write_text(
        yaml.safe_dump(
            {
                "name": "scaffolded",
                "data": {"path": str(demo_dir), "crop_seconds": 1.0, "batch_size": 2, "val_fraction": 0.0},
                "backbone": {"name": "demo_backbone", "params": {"hidden_dim": 32}},
                "teachers": {"onset": {"name": "demo_teacher"}},
                "objectives": {
                    "onset_l1": {"name": "demo_objective", "teacher": "onset"},
                    "onset_mse": {"name": "masked_regression", "teacher": "onset", "weight": 0.5},
                },
                "trainer": {"max_steps": 3, "log_every_n_steps": 1, "output_dir": str(root / "runs")},
                "tracking": {"tracking_uri": tracking_uri},
            }
        )
    )
    proc = run("-m", "mertlab", "train", str(spec), "--no-progress", site=site, cwd=root)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    run_id = proc.stdout.split("\nrun ")[1].split()[0]
    history = MlflowClient(tracking_uri).get_metric_history(run_id, "loss/onset_l1")
    assert len(history) == 3 and all(m.value > 0 for m in history)
    assert MlflowClient(tracking_uri).get_metric_history(run_id, "l1/onset_l1/masked")


def test_generated_files_and_bad_names(tmp_path, capsys):
    files = package_files("teacher", "onset_flux", "mertlab-onset-flux")
    assert set(files) == {"pyproject.toml", "mertlab_onset_flux/__init__.py", "tests/test_onset_flux.py", "README.md"}
    assert 'onset_flux = "mertlab_onset_flux"' in files["pyproject.toml"] and '"mertlab"' in files["pyproject.toml"]
    assert 'test_onset_flux = contract_tests("teacher", "onset_flux")' in files["tests/test_onset_flux.py"]
    assert "mertlab plugins install -e ." in files["README.md"] and "constraints.txt" not in files["README.md"]
    assert main(["new", "teacher", "Onset-Flux", str(tmp_path / "x")]) == 1
    assert (
        capsys.readouterr().err.strip()
        == "error: mertlab new: NAME must be a lowercase Python identifier (letters, digits, _), got 'Onset-Flux'"
    )
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("mine")
    assert main(["new", "teacher", "onset_flux", str(tmp_path / "taken")]) == 1
    assert "already exists and is not empty" in capsys.readouterr().err
    assert (tmp_path / "taken" / "keep.txt").read_text() == "mine"
