"""The MLflow experience: experiments open in the UI's model-training view, artifacts live beside
the sqlite store (not in ./mlruns of whatever folder a command ran from), the spec's description
is the run's description, and `mertlab ui` serves a run's metrics and its spec.yaml.

The UI is checked through the same HTTP endpoints its pages call and, where Debian's Chromium is
installed (`make browser`; slow-marked: `make test-all`), in a real headless browser."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from mertlab.cli import main
from mertlab.experiment.tracking import ARTIFACTS_DIR, EXPERIMENT_KIND_TAG, MODEL_TRAINING_KIND
from mertlab.train.run import train
from test_train import make_spec

pytestmark = pytest.mark.filterwarnings("ignore")


@pytest.fixture(scope="module")
def trained(demo_dir, tmp_path_factory):
    """A tiny run whose store is in one folder while the command runs from another."""
    store = tmp_path_factory.mktemp("store")
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    uri = f"sqlite:///{store / 'mlflow.db'}"
    spec = make_spec(
        demo_dir,
        store,
        uri,
        discrete="bestrq",
        discrete_params={"codebook_size": 16},
        name="ui-check",
        description="tiny run for the UI test",
        trainer={"max_steps": 2},
    )
    cwd = Path.cwd()
    os.chdir(elsewhere)
    try:
        result = train(spec, progress=False)
    finally:
        os.chdir(cwd)
    return store, elsewhere, uri, result


def test_artifacts_beside_the_store_training_view_and_description(trained):
    store, elsewhere, uri, result = trained
    client = MlflowClient(uri)
    run = client.get_run(result.run_id)
    assert run.info.artifact_uri.startswith((store / ARTIFACTS_DIR).as_uri())
    assert (Path(run.info.artifact_uri[len("file://") :]) / "spec.yaml").is_file()
    assert not (elsewhere / "mlruns").exists()
    assert client.get_experiment(run.info.experiment_id).tags[EXPERIMENT_KIND_TAG] == MODEL_TRAINING_KIND
    assert run.data.tags["mlflow.note.content"] == "tiny run for the UI test"


def test_an_older_experiment_gets_the_training_view_tag(tmp_path):
    from mertlab.experiment.tracking import ensure_experiment

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    old = client.create_experiment("made-by-mlflow")
    assert ensure_experiment(client, "made-by-mlflow") == old
    assert client.get_experiment(old).tags[EXPERIMENT_KIND_TAG] == MODEL_TRAINING_KIND


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read()


@contextlib.contextmanager
def serving_ui(uri: str):
    """`mertlab ui` on a free port, as a user starts it; yields the base URL once it answers."""
    port = free_port()
    ui = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from mertlab.cli import main; sys.exit(main())",
            "ui",
            "--tracking-uri",
            uri,
            "--port",
            str(port),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        assert f"http://localhost:{port}" in ui.stdout.readline()  # the URL comes first
        deadline = time.monotonic() + 180
        while True:
            try:
                get(f"{base}/health")
                break
            except OSError:
                assert time.monotonic() < deadline and ui.poll() is None, "the UI did not start"
                time.sleep(0.5)
        yield base
    finally:
        server = descendants(ui.pid)  # the MLflow server, its workers, job runner and task consumer
        ui.terminate()  # SIGTERM to `mertlab ui` alone, as a process manager stops it
        ui.wait(timeout=60)
    time.sleep(1)
    leftovers = [pid for pid in server if alive(pid)]
    for pid in leftovers:
        os.kill(pid, signal.SIGKILL)
    assert not leftovers, f"`mertlab ui` left {len(leftovers)} of its {len(server)} server processes running"


def descendants(pid: int) -> list[int]:
    """Pids of every live process below ``pid`` (Linux /proc)."""
    parents = {}
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit():
                stat = (entry / "stat").read_text()
                parents[int(entry.name)] = int(stat[stat.rindex(")") + 2 :].split()[1])
        except (OSError, ValueError):
            continue
    found, frontier = [], [pid]
    while frontier:
        children = [child for child, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


def alive(pid: int) -> bool:
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().split(") ")[-1][0] != "Z"
    except OSError:
        return False


def test_mertlab_ui_serves_the_runs_metrics_and_spec(trained):
    _, _, uri, result = trained
    with serving_ui(uri) as base:
        run = json.loads(get(f"{base}/ajax-api/2.0/mlflow/runs/get?run_id={result.run_id}"))["run"]
        metrics = {m["key"] for m in run["data"]["metrics"]}
        assert {"loss/total", "loss/rvq_pred", "loss/cqt_recon"} <= metrics
        listed = json.loads(get(f"{base}/ajax-api/2.0/mlflow/artifacts/list?run_id={result.run_id}"))
        assert "spec.yaml" in {f["path"] for f in listed["files"]}
        spec_text = get(f"{base}/get-artifact?path=spec.yaml&run_uuid={result.run_id}").decode()
        assert "name: ui-check" in spec_text


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
#: Headless flags for a machine without a display, a session bus or outside network.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


def rendered_page(url: str, profile: Path) -> str:
    """The DOM of ``url`` after the page's scripts ran (the UI is a React app that fetches the
    run after load), as headless Chromium renders it."""
    done = subprocess.run(
        [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--virtual-time-budget=30000", "--dump-dom", url],
        capture_output=True,
        text=True,
        timeout=180,
    )
    return done.stdout


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (`make browser`)")
def test_a_real_browser_shows_the_runs_loss_metrics_and_spec_artifact(trained, tmp_path):
    """The run page, rendered by Chromium, lists the loss/* metrics; its artifacts tab lists spec.yaml."""
    _, _, uri, result = trained
    run = MlflowClient(uri).get_run(result.run_id)
    with serving_ui(uri) as base:
        page = f"{base}/#/experiments/{run.info.experiment_id}/runs/{result.run_id}"
        overview = rendered_page(page, tmp_path / "profile-1")
        for metric in ("loss/total", "loss/rvq_pred", "loss/cqt_recon"):
            assert metric in overview, f"{metric} not on the run page"
        assert "loss/never_logged" not in overview  # the page shows this run's metrics, not any text
        assert "spec.yaml" in rendered_page(f"{page}/artifacts", tmp_path / "profile-2")


def test_ui_without_a_store_is_one_clear_error(tmp_path, capsys):
    assert main(["ui", "--tracking-uri", f"sqlite:///{tmp_path / 'none.db'}"]) == 1
    err = capsys.readouterr().err
    assert "no MLflow store at" in err and len(err.strip().splitlines()) == 1
