"""Tracking: a write-locked store at start is one line; a run that could not report its end is
never marked FAILED by the next start, and ``mertlab tracking replay`` sends what it kept --
every value once -- and sets its final status."""

from __future__ import annotations

import json
import logging
import sqlite3
import subprocess
import sys
import threading
import time

import pytest
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from mertlab.cli import main
from mertlab.experiment import metric_names as M
from mertlab.experiment.tracking import (
    PROCESS_TAG,
    RUN_DIR_TAG,
    STORE_LOGGERS,
    UNSENT_FILE,
    handled_store_errors,
    mark_crashed_runs,
    process_identity,
)
from test_nonfinite import spec_for
from test_tracking_outage import (
    KeepRecords,
    free_port,
    mlflow_error_records,
    sqlite_path,
    start_server,
    stop_server,
    wait_for_step,
)

pytestmark = pytest.mark.filterwarnings("ignore")


@pytest.mark.integration
def test_a_write_locked_sqlite_store_at_start_is_one_line(demo_dir, tmp_path, tracking_uri, write_yaml, capsys):
    """Reads work, writes block: another process in a write transaction (``BEGIN IMMEDIATE``
    and a pending write) -- the same one-line error as an exclusive lock, before any work."""
    MlflowClient(tracking_uri).search_experiments()  # the database exists
    spec = spec_for(demo_dir, tmp_path, tracking_uri, tracking={"tracking_uri": tracking_uri, "connect_timeout": 2})
    path = write_yaml(spec.model_dump(mode="json"))
    lock = sqlite3.connect(sqlite_path(tracking_uri), timeout=10, isolation_level=None)
    lock.execute("BEGIN IMMEDIATE")
    lock.execute("UPDATE experiments SET name = name WHERE 0")
    try:
        assert MlflowClient(tracking_uri).search_experiments() is not None  # reads still work
        assert main(["train", str(path), "--no-progress"]) == 1
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    stderr = capsys.readouterr().err
    err = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and "Traceback" not in stderr, stderr
    assert err[0].startswith(f"error: tracking.tracking_uri: the MLflow store {tracking_uri} is not usable")
    assert "database is locked" in err[0] and "nothing was trained" in err[0]
    assert not (tmp_path / "runs").exists()


def test_mlflow_own_error_logging_is_silenced_only_inside_handled_calls():
    handler = KeepRecords()
    logger = logging.getLogger(STORE_LOGGERS[0])
    logger.addHandler(handler)
    try:
        with handled_store_errors():
            logger.error("SQLAlchemy database error. The following exception is caught.")
            with handled_store_errors():
                logger.error("nested")
            logger.error("still handled")
        logger.error("outside")
        done = threading.Event()

        def other_thread():
            logger.error("another thread")
            done.set()

        with handled_store_errors():
            threading.Thread(target=other_thread).start()
            done.wait(5)
    finally:
        logger.removeHandler(handler)
    assert [r.getMessage() for r in handler.records] == ["outside", "another thread"]


# --------------------------------------------------------------------------- replay
def unsent_run(tracking_uri, tmp_path, experiment="replay"):
    """A RUNNING run holding steps 0-4 of loss/total, whose process is gone, and its unsent file
    with steps 3-9 (3 and 4 were sent before the outage), a tag and the end record."""
    client = MlflowClient(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    experiment_id = found.experiment_id if found else client.create_experiment(experiment)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = process_identity().split(":")[0]
    folder = tmp_path / "run-folder"
    folder.mkdir()
    run_id = client.create_run(
        experiment_id, tags={PROCESS_TAG: f"{host}:{dead.pid}:", RUN_DIR_TAG: str(folder)}
    ).info.run_id
    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(M.LOSS_TOTAL, 10.0 - s, now, s) for s in range(5)])
    records = [{"key": M.LOSS_TOTAL, "value": 10.0 - s, "step": s, "timestamp": now + s} for s in range(3, 10)] + [
        {"key": M.GRAD_NORM_TOTAL, "value": "nan", "step": 9, "timestamp": now},
        {"tag": "mertlab.stability.last_action", "value": "step 7: loss spike z=5.0, logged"},
        {"status": "FINISHED", "end_time": now + 100, "summary_step": 10},
    ]
    with (folder / UNSENT_FILE).open("w") as f:
        for record in records:
            f.write(json.dumps({"run_id": run_id, **record, "tracking_uri": tracking_uri}) + "\n")
    return client, run_id, folder


@pytest.mark.integration
def test_an_ended_run_with_an_unsent_status_is_not_marked_failed(tracking_uri, tmp_path, caplog):
    client, run_id, folder = unsent_run(tracking_uri, tmp_path, "unsent-not-failed")
    with caplog.at_level(logging.WARNING, logger="mertlab"):
        assert mark_crashed_runs(client, "unsent-not-failed") == []
    assert client.get_run(run_id).info.status == "RUNNING"
    assert any(f"mertlab tracking replay {folder}" in r.getMessage() for r in caplog.records)


@pytest.mark.integration
def test_replay_sends_every_value_once_and_finishes_the_run(tracking_uri, tmp_path, capsys):
    client, run_id, folder = unsent_run(tracking_uri, tmp_path)
    assert main(["tracking", "replay", str(folder)]) == 0
    out = capsys.readouterr().out
    assert f"run {run_id}: 6 metric values sent (2 already in the store), 1 tags, status FINISHED" in out
    steps = sorted(m.step for m in client.get_metric_history(run_id, M.LOSS_TOTAL))
    assert steps == list(range(10))  # every step exactly once
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.end_time is not None
    assert run.data.tags["mertlab.stability.last_action"].startswith("step 7")
    assert run.data.metrics[M.SUMMARY_FINAL_LOSS] == 1.0  # the summary, from the complete history
    assert (folder / "unsent_metrics.replayed.jsonl").is_file() and not (folder / UNSENT_FILE).exists()
    # again: nothing left to send (one line); the replayed file itself adds no value either
    assert main(["tracking", "replay", str(folder)]) == 1
    assert "already replayed" in capsys.readouterr().err
    assert main(["tracking", "replay", str(folder / "unsent_metrics.replayed.jsonl")]) == 0
    assert "0 metric values sent (8 already in the store)" in capsys.readouterr().out
    assert sorted(m.step for m in client.get_metric_history(run_id, M.LOSS_TOTAL)) == list(range(10))
    assert len(client.get_metric_history(run_id, M.SUMMARY_FINAL_LOSS)) == 1


def error_lines(capsys):
    """The ``error:`` lines on stderr (MLflow prints its own INFO lines when it creates a store)."""
    stderr = capsys.readouterr().err
    assert "Traceback" not in stderr, stderr
    return [line for line in stderr.splitlines() if line.startswith("error:")]


@pytest.mark.integration
def test_replay_errors_are_one_line(tracking_uri, tmp_path, capsys):
    _, _, folder = unsent_run(tracking_uri, tmp_path, "replay-errors")
    assert main(["tracking", "replay", str(tmp_path / "nothing")]) == 1
    assert "no such file" in capsys.readouterr().err
    other = f"sqlite:///{tmp_path / 'other.db'}"
    assert main(["tracking", "replay", str(folder), "--tracking-uri", other]) == 1
    err = error_lines(capsys)
    assert len(err) == 1 and "not found at" in err[0]
    with (folder / UNSENT_FILE).open("a") as f:
        f.write("{not json\n")
    assert main(["tracking", "replay", str(folder)]) == 1
    err = error_lines(capsys)
    assert len(err) == 1 and f"{UNSENT_FILE}:11: not a record of an unsent file" in err[0]


def test_a_status_the_store_does_not_take_is_kept_for_the_replay(tmp_path, caplog, monkeypatch):
    from mertlab.train.tracking_logger import ResilientMLFlowLogger

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # as check_store sets them for a run
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    logger = ResilientMLFlowLogger(
        experiment_name="gone", tracking_uri="http://127.0.0.1:9", run_id="0123abcd", flush_timeout=0.5
    )
    logger.unsent_file = tmp_path / UNSENT_FILE
    logger._initialized = True  # as after the run started, before the store went away
    logger.log_metrics({M.LOSS_TOTAL: 1.5}, step=3)
    with caplog.at_level(logging.WARNING, logger="mertlab"):
        logger.finalize("success")
    records = [json.loads(line) for line in logger.unsent_file.read_text().splitlines()]
    assert records[0] == {
        "run_id": "0123abcd",
        "key": M.LOSS_TOTAL,
        "value": 1.5,
        "step": 3,
        "timestamp": records[0]["timestamp"],
        "tracking_uri": "http://127.0.0.1:9",
    }
    assert records[-1]["status"] == "FINISHED" and records[-1]["end_time"] > 0
    assert any("mertlab tracking replay" in r.getMessage() for r in caplog.records)


@pytest.mark.integration
def test_a_run_whose_server_is_gone_for_good_is_replayed_complete(demo_dir, tmp_path, caplog):
    """The issue's case: the tracking server dies mid-run and never comes back. Training ends
    normally (rc 0) with the values in the unsent file; the next start does not mark the run
    FAILED; once a server is back, the replay makes the run complete and FINISHED."""
    store, port = tmp_path / "server" / "mlflow.db", free_port()
    store.parent.mkdir()
    server = start_server(store, port)
    uri = f"http://127.0.0.1:{port}"
    MlflowClient(uri).search_experiments()  # warm: its first answer can be slow on a busy machine
    steps, tracking = 8, {"tracking_uri": uri, "connect_timeout": 10}
    spec = spec_for(demo_dir, tmp_path, uri, trainer={"max_steps": steps, "val_every_n_steps": 100}, tracking=tracking)
    from mertlab.train.run import train

    killer = threading.Thread(target=lambda: (wait_for_step(store, 2), stop_server(server)), daemon=True)
    killer.start()
    try:
        with mlflow_error_records() as mlflow_handler, caplog.at_level(logging.WARNING, logger="mertlab"):
            result = train(spec, progress=False)
    finally:
        killer.join(timeout=120)
    assert not mlflow_handler.records, [r.getMessage()[:200] for r in mlflow_handler.records]  # silenced
    unsent = result.checkpoint_dir.parent / UNSENT_FILE
    records = [json.loads(line) for line in unsent.read_text().splitlines()]
    assert any(r.get("status") == "FINISHED" for r in records)
    server = start_server(store, port)
    try:
        client = MlflowClient(uri)
        assert client.get_run(result.run_id).info.status == "RUNNING"
        assert mark_crashed_runs(client, spec.name) == []  # the next start leaves it alone
        assert client.get_run(result.run_id).info.status == "RUNNING"
        assert main(["tracking", "replay", str(unsent.parent)]) == 0
        run = client.get_run(result.run_id)
        assert run.info.status == "FINISHED"
        logged = sorted(m.step for m in client.get_metric_history(result.run_id, M.LOSS_TOTAL))
        assert logged == list(range(steps))
        assert M.SUMMARY_FINAL_LOSS in run.data.metrics
    finally:
        stop_server(server)
