"""One writer per run: the run lock, its holder in the refusal, stale locks taken over, the
"left RUNNING" check looking at the lock, and two concurrent ``train --resume``."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time

import pytest
import yaml
from mlflow.tracking import MlflowClient

from launch_support import MERTLAB, base_env, tiny_spec
from mertlab.cli import main
from mertlab.errors import MertlabError
from mertlab.experiment.tracking import LOCK_TAG, PROCESS_TAG, mark_crashed_runs
from mertlab.toolkit.run_lock import (
    LOCK_FILE,
    acquire_run_lock,
    lock_held,
    process_identity,
    read_holder,
)

pytestmark = pytest.mark.filterwarnings("ignore")

HOLD = (
    "import sys, time\n"
    "from mertlab.toolkit.run_lock import acquire_run_lock\n"
    "acquire_run_lock(sys.argv[1])\n"
    "print('held', flush=True)\n"
    "time.sleep(120)\n"
)


def gone_process_identity() -> str:
    """The identity of a process of this host that has ended."""
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return process_identity(int(done.stdout))


@pytest.fixture
def holder(tmp_path):
    """Another process holding the lock of ``tmp_path / 'run'``."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(tmp_path / "run")], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout.readline().strip() == "held", proc.stderr.read()
        yield proc
    finally:
        proc.kill()
        proc.wait(timeout=30)


@pytest.mark.integration
def test_a_held_lock_refuses_with_one_line_naming_the_holder_and_frees_when_it_dies(tmp_path, holder):
    path = tmp_path / "run" / LOCK_FILE
    assert lock_held(path)
    with pytest.raises(MertlabError) as refused:
        acquire_run_lock(tmp_path / "run")
    message = str(refused.value)
    assert "\n" not in message and f"pid {holder.pid} on {os.uname().nodename}" in message and str(path) in message
    holder.kill()  # as kill -9: the operating system drops the lock
    holder.wait(timeout=30)
    assert not lock_held(path)
    with acquire_run_lock(tmp_path / "run") as lock:
        assert read_holder(lock.path).identity == process_identity()


def test_the_lock_is_reentrant_in_one_process_and_released_empty(tmp_path):
    first = acquire_run_lock(tmp_path / "run")
    again = acquire_run_lock(tmp_path / "run")
    assert again is first and lock_held(first.path)
    again.release()
    assert lock_held(first.path)  # still held by the outer hold
    first.release()
    assert not lock_held(first.path) and first.path.read_text() == ""


@pytest.mark.integration
def test_a_stale_lock_of_a_process_that_is_gone_is_taken_over(tmp_path, caplog):
    path = tmp_path / "run" / LOCK_FILE
    path.parent.mkdir()
    stale = gone_process_identity()
    path.write_text(f'{{"identity": "{stale}", "since": "2024-01-01 00:00:00"}}')
    with caplog.at_level(logging.WARNING, logger="mertlab"), acquire_run_lock(path.parent):
        assert read_holder(path).identity == process_identity()
    pid = stale.split(":")[1]
    assert any(f"taking over the lock of pid {pid}" in r.getMessage() for r in caplog.records)


@pytest.mark.integration
def test_left_running_check_looks_at_the_lock_not_only_the_process_tag(tmp_path, tracking_uri, holder):
    """A live holder keeps its run RUNNING even when the process tag names a process that is gone
    (the tag of a second process that started on the same run); without a holder it is FAILED."""
    client = MlflowClient(tracking_uri)
    experiment = client.create_experiment("lock-check")
    gone = gone_process_identity()
    alive = client.create_run(experiment, tags={PROCESS_TAG: gone, LOCK_TAG: str(tmp_path / "run" / LOCK_FILE)})
    (tmp_path / "free").mkdir()
    (tmp_path / "free" / LOCK_FILE).write_text("")
    crashed = client.create_run(experiment, tags={PROCESS_TAG: gone, LOCK_TAG: str(tmp_path / "free" / LOCK_FILE)})
    assert mark_crashed_runs(client, "lock-check") == [crashed.info.run_id]
    assert client.get_run(alive.info.run_id).info.status == "RUNNING"


@pytest.mark.integration
def test_two_concurrent_resumes_of_one_run_the_second_is_refused_with_one_line(
    demo_dir, tmp_path, tracking_uri, one_thread, capsys
):
    spec = tiny_spec("one-writer", demo_dir, tmp_path, tracking_uri, max_steps=1, val_every_n_steps=1)
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    assert main(["train", str(path), "--no-progress"]) == 0
    client = MlflowClient(tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("one-writer").experiment_id])
    lock = tmp_path / "runs" / "one-writer" / run.info.run_id / LOCK_FILE
    assert not lock_held(lock)
    resume = [MERTLAB, "train", str(path), "--resume", "--no-progress", "-o", "trainer.max_steps=100000"]
    first = subprocess.Popen(resume, cwd=tmp_path, env=base_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 240
        while not lock_held(lock) and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert lock_held(lock), first.stderr.read().decode()[-3000:] if first.poll() is not None else "no lock"
        second = subprocess.run(resume, cwd=tmp_path, env=base_env(), capture_output=True, text=True, timeout=240)
        assert second.returncode == 1
        errors = [line for line in second.stderr.splitlines() if line.strip()]
        assert [line for line in errors if line.startswith("error:")] == errors[
            -1:
        ] and "Traceback" not in second.stderr
        assert f"this run is being trained by pid {first.pid} on {os.uname().nodename}" in errors[-1]
        assert first.poll() is None  # the first one trains on, untouched
        assert client.get_run(run.info.run_id).info.status == "RUNNING"
    finally:
        first.kill()
        first.wait(timeout=60)
