"""MLflow tracking: where runs go, and what is logged about each run besides metrics."""
from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

from mertlab.spec import ExperimentSpec, dump_spec

DEFAULT_DB = "mlflow.db"


def resolve_tracking_uri(spec: ExperimentSpec) -> str:
    """The spec's URI, else ``$MLFLOW_TRACKING_URI``, else ``sqlite:///<cwd>/mlflow.db``."""
    return spec.tracking.tracking_uri or default_tracking_uri()


def default_tracking_uri() -> str:
    """``$MLFLOW_TRACKING_URI``, else ``sqlite:///<cwd>/mlflow.db`` (where a spec sets none)."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return f"sqlite:///{Path.cwd() / DEFAULT_DB}"


def mlflow_executable() -> str:
    """``mlflow`` from this Python's environment (e.g. ``.venv/bin/mlflow``), so the printed
    command works without activating the environment; plain ``mlflow`` if it is not there."""
    exe = Path(sys.executable).parent / "mlflow"
    if not exe.is_file():
        return "mlflow"
    try:
        return str(exe.relative_to(Path.cwd()))
    except ValueError:
        return str(exe)


def ui_command(tracking_uri: str) -> str:
    """The command that opens the MLflow UI on this store."""
    if tracking_uri.startswith("sqlite:///") and Path(tracking_uri[len("sqlite:///"):]) == Path.cwd() / DEFAULT_DB:
        tracking_uri = f"sqlite:///{DEFAULT_DB}"
    return f"{mlflow_executable()} ui --backend-store-uri {tracking_uri}"


def flatten(data: Any, prefix: str = "") -> dict[str, str]:
    """Nested spec -> ``{"optim.lr": "0.0005", ...}`` (MLflow params are strings)."""
    if isinstance(data, dict):
        if not data and prefix:
            return {prefix: "{}"}
        out: dict[str, str] = {}
        for key, value in data.items():
            out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: str(data)[:6000]}


def git_commit(directory: Path | None = None) -> str | None:
    """Commit of the git checkout containing ``directory`` (the working directory by default)."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=directory or Path.cwd(), capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def run_tags(spec: ExperimentSpec, registry: Any) -> dict[str, str]:
    """Versions of mertlab, torch and every loaded plugin, the git commit, the spec's own tags."""
    import lightning
    import torch

    import mertlab

    tags = {
        "mertlab.version": mertlab.__version__,
        "torch.version": torch.__version__,
        "lightning.version": lightning.__version__,
        "python.version": platform.python_version(),
        "mertlab.plugins": "; ".join(
            sorted(f"{s.plugin} ({s.label})" for s in registry.plugin_manager.sources.values())
        ),
    }
    used = [("backbone", spec.backbone.name)] + [("teacher", t.name) for t in spec.teachers.values()]
    used += [("objective", o.name) for o in spec.objectives.values()] + [("masking", spec.masking.name)]
    for kind, name in used:
        tags[f"mertlab.{kind}.{name}.source"] = registry.get(kind, name).source.label
    commit = git_commit() or git_commit(Path(mertlab.__file__).parent)
    if commit:
        tags["mlflow.source.git.commit"] = commit
    tags.update(spec.tracking.tags)
    return tags


def log_spec(logger: Any, spec: ExperimentSpec) -> None:
    """Flattened params and the resolved YAML (artifact ``spec.yaml``) on the logger's run."""
    client, run_id = logger.experiment, logger.run_id
    existing = set(client.get_run(run_id).data.params)
    params = {k: v for k, v in flatten(spec.model_dump(mode="json")).items() if k not in existing}
    if params:
        logger.log_hyperparams(params)
    client.log_text(run_id, dump_spec(spec), "spec.yaml")
