"""MLflow tracking: where runs go, and what is logged about each run besides metrics."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mertlab.experiment.spec import ExperimentSpec, dump_spec
from mertlab.toolkit.run_lock import lock_held, process_alive, process_identity  # noqa: F401 - tracking's API

DEFAULT_DB = "mlflow.db"
log = logging.getLogger(__name__)


def resolve_tracking_uri(spec: ExperimentSpec) -> str:
    """The spec's URI, else ``$MLFLOW_TRACKING_URI``, else ``sqlite:///<cwd>/mlflow.db``."""
    return spec.tracking.tracking_uri or default_tracking_uri()


def default_tracking_uri() -> str:
    """``$MLFLOW_TRACKING_URI``, else ``sqlite:///<cwd>/mlflow.db`` (where a spec sets none)."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return f"sqlite:///{Path.cwd() / DEFAULT_DB}"


def cluster_store_warning(tracking_uri: str, what: str) -> str | None:
    """A warning when ``what`` (a run on several nodes, a SLURM job) logs to a sqlite file:
    sqlite's locks are unreliable on network file systems and serialise every writer."""
    if not tracking_uri.startswith("sqlite:"):
        return None
    return (
        f"{what} logs to {tracking_uri}: sqlite on a shared file system locks unreliably when several machines "
        "write; run `mlflow server` with a database back end and set tracking.tracking_uri (or "
        "MLFLOW_TRACKING_URI) to its http:// address (docs/scaling.md, 'Tracking on a cluster')"
    )


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
#: Loggers through which MLflow and its HTTP client report store failures that mertlab handles
#: itself (SQLAlchemy errors with a full traceback, HTTP retries).
STORE_LOGGERS = ("mlflow.store.db.utils", "mlflow.utils.rest_utils", "mlflow.tracking.fluent", "urllib3.connectionpool")
_handling = threading.local()


class _DropHandledStoreErrors(logging.Filter):
    """Drops records logged inside :func:`handled_store_errors` (in that thread)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(_handling, "active", False)


_FILTER = _DropHandledStoreErrors()


@contextlib.contextmanager
def handled_store_errors() -> Iterator[None]:
    """Silence MLflow's own error logging (:data:`STORE_LOGGERS`) for store calls whose failure
    mertlab handles and reports in its own warning: no traceback per retry in the log."""
    for name in STORE_LOGGERS:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
    previous = getattr(_handling, "active", False)
    _handling.active = True
    try:
        yield
    finally:
        _handling.active = previous


#: MLflow's own HTTP retries (default: 7 with backoff, minutes) are lowered unless the user set
#: them: mertlab's logger queues and retries by itself (mertlab.train.tracking_logger).
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
PROCESS_TAG = "mertlab.process"
#: Run tag: the run's own folder (checkpoints, :data:`UNSENT_FILE`), absolute.
RUN_DIR_TAG = "mertlab.run_dir"
#: MLflow's limits per ``log_batch`` call.
MAX_METRICS_PER_BATCH = 1000
MAX_TAGS_PER_BATCH = 100
#: What a run could not send to the store (JSON lines; ``mertlab tracking replay`` sends it).
UNSENT_FILE = "unsent_metrics.jsonl"
#: Run tag: the run's lock file (:mod:`mertlab.toolkit.run_lock`), held while a process trains it.
LOCK_TAG = "mertlab.lock"
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
        with handled_store_errors():
            client.set_tag(run_id, ERROR_TAG, failure_reason(exc))
            client.set_terminated(run_id, "FAILED")
    except Exception as store_error:  # noqa: BLE001 - the training error matters more
        logging.getLogger(__name__).warning("MLflow: could not record why run %s failed (%s)", run_id, store_error)


def check_store(tracking_uri: str, timeout: float) -> Any:
    """An ``MlflowClient`` of ``tracking_uri`` once the store answers, retried for ``timeout``
    seconds, else a :class:`~mertlab.errors.MertlabError` (one line, before any work is done).
    A ``sqlite:`` store must also take writes (:func:`check_sqlite_writable`)."""
    from mlflow.tracking import MlflowClient

    for key, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(key, value)
    outcome: dict[str, Any] = {}

    def probe() -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                client = MlflowClient(tracking_uri)
                client.search_experiments(max_results=1)
                check_sqlite_writable(tracking_uri, max(0.1, min(5.0, deadline - time.monotonic())))
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
    raise store_unusable(tracking_uri, error if error else f"no answer within {timeout:g} s")


def store_unusable(tracking_uri: str, why: Exception | str) -> Exception:
    """The one-line error of a tracking store that cannot be used at start (nothing trained)."""
    from mertlab.errors import MertlabError

    if isinstance(why, Exception):
        text = str(why).splitlines()[0][:200] if str(why) else ""
        why = f"{type(why).__name__}: {text}"
    return MertlabError(
        f"tracking.tracking_uri: the MLflow store {tracking_uri} is not usable ({why}); nothing was trained. "
        "Start or fix the store (or unset tracking.tracking_uri and $MLFLOW_TRACKING_URI for sqlite:///mlflow.db); "
        "tracking.connect_timeout sets how long to wait"
    )


def check_sqlite_writable(tracking_uri: str, timeout: float) -> None:
    """For a ``sqlite:`` store: take and release its write lock (``BEGIN IMMEDIATE``), waiting at
    most ``timeout`` seconds; ``sqlite3.OperationalError`` ("database is locked") when another
    process holds it -- an exclusive lock, or a write transaction that still lets readers in.
    Other stores: nothing to check."""
    if not tracking_uri.startswith("sqlite:"):
        return
    import sqlite3

    from sqlalchemy.engine import make_url

    database = make_url(tracking_uri).database
    if not database or database == ":memory:":
        return
    connection = sqlite3.connect(database, timeout=timeout, isolation_level=None)
    try:
        connection.execute("BEGIN IMMEDIATE")
        connection.execute("ROLLBACK")
    finally:
        connection.close()


@contextlib.contextmanager
def store_errors(tracking_uri: str) -> Iterator[None]:
    """Start-up writes to the store (experiment, run, params, tags): any failure becomes the
    one-line error of :func:`store_unusable`, as when the store is unusable before them."""
    from mertlab.errors import MertlabError

    try:
        with handled_store_errors():
            yield
    except MertlabError:
        raise
    except Exception as exc:  # noqa: BLE001 - MlflowException, sqlite, HTTP: one line
        raise store_unusable(tracking_uri, exc) from None


def run_in_progress(run: Any) -> bool:
    """Whether a RUNNING MLflow run still has a training process: its lock file is held
    (:data:`LOCK_TAG`; any host, where the file system has locks), or the process named in its
    :data:`PROCESS_TAG` may still run (on another host it is assumed to)."""
    lock = run.data.tags.get(LOCK_TAG)
    if lock and lock_held(lock):
        return True
    identity = run.data.tags.get(PROCESS_TAG)
    return not identity or process_alive(identity)


def ended_unreported(run: Any) -> Path | None:
    """The unsent file (:data:`UNSENT_FILE` in the run's folder, tag :data:`RUN_DIR_TAG`) that
    says run ``run`` ended but the store did not take its status, or None."""
    folder = run.data.tags.get(RUN_DIR_TAG)
    if not folder:
        return None
    path = Path(folder) / UNSENT_FILE
    try:
        with path.open() as f:
            return path if any(_is_end_record(line) for line in f) else None
    except (OSError, UnicodeDecodeError):
        return None


def _is_end_record(line: str) -> bool:
    """An end record of an unsent file (``{"run_id", "status", "end_time", ...}``)."""
    if '"status"' not in line:
        return False
    try:
        record = json.loads(line)
    except ValueError:
        return False
    return isinstance(record, dict) and "status" in record and "key" not in record and "tag" not in record


def mark_crashed_runs(client: Any, experiment_name: str) -> list[str]:
    """Mark FAILED the RUNNING runs of the experiment whose training process is gone
    (:func:`run_in_progress`); a run that ended but could not report its status
    (:func:`ended_unreported`) is left for ``mertlab tracking replay``, named in a warning."""
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        return []
    marked = []
    for run in client.search_runs([experiment.experiment_id], "attributes.status = 'RUNNING'", max_results=1000):
        if run_in_progress(run):
            continue
        unsent = ended_unreported(run)
        if unsent is not None:
            log.warning(
                "MLflow run %s ended but its status and last values were not sent (store unreachable then); "
                "send them with `mertlab tracking replay %s`",
                run.info.run_id,
                unsent.parent,
            )
        else:
            client.set_tag(
                run.info.run_id,
                "mertlab.failure",
                "the training process ended without closing the run (killed or crashed)",
            )
            client.set_terminated(run.info.run_id, "FAILED")
            marked.append(run.info.run_id)
    return marked
