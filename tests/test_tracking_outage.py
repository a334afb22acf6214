"""Tracking outages never stop training: a clear error before any work when the store is not
usable at start; mid-run, metrics are queued and retried (locked sqlite, a real MLflow server
going down); runs left RUNNING by a dead process are marked FAILED on the next start."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from mertlab.errors import MertlabError
from mertlab.experiment import metric_names as M
from mertlab.experiment.tracking import PROCESS_TAG, STORE_LOGGERS, mark_crashed_runs, process_identity
from mertlab.train.run import train
from test_nonfinite import spec_for

pytestmark = [pytest.mark.integration, pytest.mark.filterwarnings("ignore")]

STEPS = 10


def sqlite_path(uri: str) -> Path:
    return Path(uri[len("sqlite:///") :])


def wait_for_step(db: Path, step: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with sqlite3.connect(db, timeout=0.5) as con:
                row = con.execute("SELECT max(step) FROM metrics WHERE key = 'loss/total'").fetchone()
            if row[0] is not None and row[0] >= step:
                return
        except sqlite3.Error:
            pass
        time.sleep(0.05)


def assert_complete(client, run_id):
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    steps = sorted(m.step for m in client.get_metric_history(run_id, M.LOSS_TOTAL))
    assert steps == list(range(STEPS)), steps  # every step exactly once


def test_store_not_usable_at_start_is_one_clear_error_before_any_work(demo_dir, tmp_path, tracking_uri):
    MlflowClient(tracking_uri).search_experiments()  # the database exists
    lock = sqlite3.connect(sqlite_path(tracking_uri), timeout=10)
    lock.execute("BEGIN EXCLUSIVE")
    try:
        spec = spec_for(demo_dir, tmp_path, tracking_uri, tracking={"tracking_uri": tracking_uri, "connect_timeout": 2})
        with pytest.raises(
            MertlabError, match=r"tracking.tracking_uri: the MLflow store sqlite:.* is not usable .*nothing was trained"
        ):
            train(spec, progress=False)
    finally:
        lock.rollback()
        lock.close()
    assert not (tmp_path / "runs").exists()
    unreachable = spec_for(
        demo_dir, tmp_path, tracking_uri, tracking={"tracking_uri": "http://127.0.0.1:9", "connect_timeout": 3}
    )
    started = time.monotonic()
    with pytest.raises(MertlabError, match=r"the MLflow store http://127.0.0.1:9 is not usable"):
        train(unreachable, progress=False)
    assert time.monotonic() - started < 60 and not (tmp_path / "runs").exists()


class KeepRecords(logging.Handler):
    """Keeps the records of the loggers it is added to."""

    def __init__(self, level: int = logging.NOTSET) -> None:
        super().__init__(level)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextlib.contextmanager
def mlflow_error_records():
    """The ERROR records of MLflow's own store loggers (they do not propagate to caplog)."""
    keep = KeepRecords(logging.ERROR)
    for name in STORE_LOGGERS:
        logging.getLogger(name).addHandler(keep)
    try:
        yield keep
    finally:
        for name in STORE_LOGGERS:
            logging.getLogger(name).removeHandler(keep)


def test_sqlite_locked_mid_run_metrics_are_kept_and_sent_later(demo_dir, tmp_path, tracking_uri, caplog):
    db = sqlite_path(tracking_uri)
    spec = spec_for(
        demo_dir,
        tmp_path,
        tracking_uri,
        trainer={"max_steps": STEPS, "val_every_n_steps": 5},
        tracking={"tracking_uri": tracking_uri, "connect_timeout": 60},
    )

    def hold_lock():
        wait_for_step(db, 2)
        with sqlite3.connect(db, timeout=30) as con:
            con.execute("BEGIN EXCLUSIVE")
            time.sleep(24)  # longer than MLflow's own sqlite wait (PRAGMA busy_timeout = 20 s), so writes fail
            con.rollback()

    locker = threading.Thread(target=hold_lock, daemon=True)
    locker.start()
    with mlflow_error_records() as mlflow_errors, caplog.at_level(logging.WARNING, logger="mertlab"):
        result = train(spec, progress=False)
    locker.join()
    messages = [r.getMessage() for r in caplog.records]
    assert len([m for m in messages if "failed" in m and "retried" in m]) == 1  # warned once
    assert not mlflow_errors.records, [r.getMessage()[:200] for r in mlflow_errors.records]  # and only that
    assert any("is back" in m for m in messages)
    assert (result.checkpoint_dir / "last.ckpt").is_file()
    assert_complete(MlflowClient(tracking_uri), result.run_id)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(store: Path, port: int) -> subprocess.Popen:
    mlflow = Path(sys.executable).parent / "mlflow"
    proc = subprocess.Popen(
        [
            str(mlflow),
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
            "--backend-store-uri",
            f"sqlite:///{store}",
            "--default-artifact-root",
            str(store.parent / "artifacts"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1):
                return proc
        except OSError:
            time.sleep(0.3)
    proc.kill()
    raise AssertionError("mlflow server did not start")


def stop_server(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, 9)
    proc.wait()


def test_real_mlflow_server_going_down_mid_run(demo_dir, tmp_path, caplog):
    store, port = tmp_path / "server" / "mlflow.db", free_port()
    store.parent.mkdir()
    server = start_server(store, port)
    uri = f"http://127.0.0.1:{port}"
    spec = spec_for(
        demo_dir,
        tmp_path,
        uri,
        trainer={"max_steps": STEPS, "val_every_n_steps": 5},
        tracking={"tracking_uri": uri, "connect_timeout": 120},
    )
    restarted = {}

    def outage():
        wait_for_step(store, 2)
        stop_server(server)
        time.sleep(3)
        restarted["server"] = start_server(store, port)

    thread = threading.Thread(target=outage, daemon=True)
    thread.start()
    try:
        with caplog.at_level(logging.WARNING, logger="mertlab"):
            result = train(spec, progress=False)
        thread.join()
        assert any("failed" in r.getMessage() for r in caplog.records)
        assert (result.checkpoint_dir / "last.ckpt").is_file()
        assert_complete(MlflowClient(uri), result.run_id)
    finally:
        thread.join(timeout=200)
        stop_server(restarted.get("server", server))


def test_runs_left_running_by_a_dead_process_are_marked_failed(tracking_uri):
    client = MlflowClient(tracking_uri)
    experiment = "crashed-runs"
    experiment_id = client.get_experiment_by_name(experiment) or client.create_experiment(experiment)
    experiment_id = getattr(experiment_id, "experiment_id", experiment_id)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = process_identity().split(":")[0]
    runs = {
        "dead": f"{host}:{dead.pid}:",
        "alive": process_identity(),
        "other-host": f"elsewhere.example:{dead.pid}:",
    }
    ids = {
        name: client.create_run(experiment_id, tags={PROCESS_TAG: ident}).info.run_id for name, ident in runs.items()
    }
    assert mark_crashed_runs(client, experiment) == [ids["dead"]]
    status = {name: client.get_run(run_id).info.status for name, run_id in ids.items()}
    assert status == {"dead": "FAILED", "alive": "RUNNING", "other-host": "RUNNING"}
    assert "ended without closing the run" in client.get_run(ids["dead"]).data.tags["mertlab.failure"]
