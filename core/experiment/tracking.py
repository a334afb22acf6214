"""MLflow tracking: where runs go, and what is logged about each run besides metrics."""

from __future__ import annotations

import logging
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from mertlab.experiment.spec import ExperimentSpec, dump_spec

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


def venv_executable(name: str) -> str:
    """``name`` from this Python's environment (e.g. ``.venv/bin/mlflow``), so a printed command
    works without activating the environment; plain ``name`` if it is not there."""
    exe = Path(sys.executable).parent / name
    if not exe.is_file():
        return name
    try:
        return str(exe.relative_to(Path.cwd()))
    except ValueError:
        return str(exe)


def mlflow_executable() -> str:
    """``mlflow`` of this Python's environment (see :func:`venv_executable`)."""
    return venv_executable("mlflow")


def ui_command(tracking_uri: str) -> str:
    """The command that opens the MLflow UI on this store (``mertlab ui``)."""
    if tracking_uri.startswith("sqlite:///") and Path(tracking_uri[len("sqlite:///") :]) == Path.cwd() / DEFAULT_DB:
        return f"{venv_executable('mertlab')} ui"
    return f"{venv_executable('mertlab')} ui --tracking-uri {tracking_uri}"


#: MLflow 3 opens an experiment without this tag in its GenAI (traces) view; mertlab's runs are
#: model training, so their experiments say so and open in the training-runs view.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_TRAINING_KIND = "custom_model_development"
#: Folder, next to a local sqlite store, that holds the artifacts of the experiments mertlab creates.
ARTIFACTS_DIR = "mlartifacts"


def artifact_location(tracking_uri: str, experiment: str) -> str | None:
    """Where a new experiment keeps its artifacts: for a local ``sqlite:///PATH`` store,
    ``<PATH's folder>/mlartifacts/<experiment>`` (beside the store, whatever folder a command runs
    from -- MLflow's default is ``./mlruns`` of the current directory); None (the store's own
    default) for servers and other stores."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    folder = Path(tracking_uri[len("sqlite:///") :]).parent
    return (folder.resolve() / ARTIFACTS_DIR / re.sub(r"[^\w.-]+", "_", experiment)).as_uri()


def ensure_experiment(client: Any, name: str) -> str:
    """The id of experiment ``name``, created when missing with its artifacts beside the store
    (:func:`artifact_location`) and tagged for MLflow's model-training view; an existing one
    without the tag gets it. Safe when two processes create the same experiment at once."""
    found = client.get_experiment_by_name(name)
    if found is None:
        try:
            return client.create_experiment(
                name,
                artifact_location=artifact_location(client.tracking_uri, name),
                tags={EXPERIMENT_KIND_TAG: MODEL_TRAINING_KIND},
            )
        except Exception:  # noqa: BLE001 - created meanwhile by another process (a sweep child)
            found = client.get_experiment_by_name(name)
            if found is None:
                raise
    if EXPERIMENT_KIND_TAG not in found.tags:
        client.set_experiment_tag(found.experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING_KIND)
    return found.experiment_id


def ui_argv(tracking_uri: str, host: str = "127.0.0.1", port: int = 5000) -> list[str]:
    """The ``mlflow ui`` command line serving ``tracking_uri`` (for a local sqlite store, new
    experiments' artifacts default to the ``mlartifacts`` folder beside it, as mertlab's own)."""
    argv = [mlflow_executable(), "ui", "--backend-store-uri", tracking_uri, "--host", host, "--port", str(port)]
    if tracking_uri.startswith("sqlite:///"):
        folder = Path(tracking_uri[len("sqlite:///") :]).parent.resolve()
        argv += ["--default-artifact-root", str(folder / ARTIFACTS_DIR)]
    return argv


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
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=directory or Path.cwd(), capture_output=True, text=True, timeout=10
        )
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
    used += [("augmentation", a.name) for a in spec.augment.values()]
    for kind, name in used:
        tags[f"mertlab.{kind}.{name}.source"] = registry.get(kind, name).source.label
    commit = git_commit() or git_commit(Path(mertlab.__file__).parent)
    if commit:
        tags["mlflow.source.git.commit"] = commit
    if spec.description:
        tags["mlflow.note.content"] = spec.description  # the run page's description
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


# --------------------------------------------------------------------------- store health
#: MLflow's own HTTP retries (default: 7 with backoff, minutes) are lowered unless the user set
#: them: mertlab's logger queues and retries by itself (mertlab.train.tracking_logger).
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
PROCESS_TAG = "mertlab.process"
#: Tag of a FAILED run: the one-line reason (the error mertlab printed).
ERROR_TAG = "mertlab.error"
#: MLflow keeps tag values up to 5000 characters (older stores).
_TAG_LIMIT = 5000


def failure_reason(exc: BaseException) -> str:
    """``exc`` as one line: a mertlab error's message (its problems joined by `` | ``), else
    ``Type: message``."""
    from mertlab.errors import MertlabError

    lines = str(exc).splitlines() if isinstance(exc, MertlabError) else [f"{type(exc).__name__}: {exc}"]
    text = " | ".join(" ".join(line.split()) for line in lines if line.strip()) or type(exc).__name__
    return text if len(text) <= _TAG_LIMIT else text[: _TAG_LIMIT - 3] + "..."


def tag_failure(client: Any, run_id: str | None, exc: BaseException) -> None:
    """Tag run ``run_id`` with :data:`ERROR_TAG` = :func:`failure_reason` and mark it FAILED; a
    store that fails now is a warning (it must not hide the error itself)."""
    if client is None or not run_id:
        return
    try:
        client.set_tag(run_id, ERROR_TAG, failure_reason(exc))
        client.set_terminated(run_id, "FAILED")
    except Exception as store_error:  # noqa: BLE001 - the training error matters more
        logging.getLogger(__name__).warning("MLflow: could not record why run %s failed (%s)", run_id, store_error)


def check_store(tracking_uri: str, timeout: float) -> Any:
    """An ``MlflowClient`` of ``tracking_uri`` once the store answers, retried for ``timeout``
    seconds, else a :class:`~mertlab.errors.MertlabError` (one line, before any work is done)."""
    import threading

    from mlflow.tracking import MlflowClient

    from mertlab.errors import MertlabError

    for key, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(key, value)
    outcome: dict[str, Any] = {}

    def probe() -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                client = MlflowClient(tracking_uri)
                client.search_experiments(max_results=1)
                outcome["client"] = client
                return
            except Exception as exc:  # noqa: BLE001 - any store failure: retry until the deadline
                outcome["error"] = exc
                if time.monotonic() + 1 >= deadline:
                    return
                time.sleep(1)

    thread = threading.Thread(target=probe, name="mertlab-mlflow-check", daemon=True)
    thread.start()
    # A local store answers or fails by itself (a locked sqlite file fails after sqlite's busy
    # timeout; creating a new database can take a while); a remote one may hang: bounded wait.
    local = tracking_uri.startswith(("sqlite:", "file:")) or "://" not in tracking_uri
    thread.join(None if local else timeout)
    if "client" in outcome:
        return outcome["client"]
    error = outcome.get("error")
    why = f"{type(error).__name__}: {str(error).splitlines()[0][:200]}" if error else f"no answer within {timeout:g} s"
    raise MertlabError(
        f"tracking.tracking_uri: the MLflow store {tracking_uri} is not usable ({why}); nothing was trained. "
        "Start or fix the store (or unset tracking.tracking_uri and $MLFLOW_TRACKING_URI for sqlite:///mlflow.db); "
        "tracking.connect_timeout sets how long to wait"
    )


def _start_ticks(pid: int) -> str | None:
    """The start time of process ``pid`` (Linux ``/proc``; None elsewhere or if it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def process_identity() -> str:
    """``host:pid:start`` of this process, tagged on the runs it trains (see :func:`mark_crashed_runs`)."""
    pid = os.getpid()
    return f"{platform.node()}:{pid}:{_start_ticks(pid) or ''}"


def process_alive(identity: str) -> bool:
    """Whether the process of a :func:`process_identity` may still run (other hosts: assumed alive)."""
    host, _, rest = identity.partition(":")
    pid_text, _, start = rest.partition(":")
    if host != platform.node() or not pid_text.isdigit():
        return True
    pid = int(pid_text)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not start or _start_ticks(pid) == start


def mark_crashed_runs(client: Any, experiment_name: str) -> list[str]:
    """Mark FAILED the RUNNING runs of the experiment whose training process (on this host) is gone."""
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        return []
    marked = []
    for run in client.search_runs([experiment.experiment_id], "attributes.status = 'RUNNING'", max_results=1000):
        identity = run.data.tags.get(PROCESS_TAG)
        if identity and not process_alive(identity):
            client.set_tag(
                run.info.run_id,
                "mertlab.failure",
                "the training process ended without closing the run (killed or crashed)",
            )
            client.set_terminated(run.info.run_id, "FAILED")
            marked.append(run.info.run_id)
    return marked
