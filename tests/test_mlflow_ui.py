"""The MLflow experience: experiments open in the UI's model-training view, artifacts live beside
the sqlite store (not in ./mlruns of whatever folder a command ran from), the spec's description
is the run's description, every link mertlab prints lands on the right page of the
model-training view, and the experiment's comparison view shows the probe scores and run
summaries of a sweep's children, grouped under their sweep.

The UI is checked through the HTTP endpoints its pages call and in a real headless Chromium
(Debian's ``chromium``, which ``make test`` installs through ``make system-deps`` where it has root
or sudo, as in CI; without it the browser test is skipped, or fails where
``MERTLAB_REQUIRE_SYSTEM_DEPS=1``, which ``make test`` sets when it could install it). Its
screenshots go to the folder named at the end of the run (``--screenshots DIR`` to choose it;
``docs/img`` holds the ones the docs show)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mlflow.tracking import MlflowClient

from browser_support import CHROMIUM, headless_chromium
from mertlab.cli import main
from mertlab.experiment import mlflow_ui
from mertlab.experiment.mlflow_ui import (
    DEFAULT_UI_URL,
    VIEW_KEY,
    VIEW_TAG_PREFIX,
    newest_experiment,
    refresh_comparison_view,
    ui_base_url,
    ui_link,
)
from mertlab.experiment.tracking import ARTIFACTS_DIR, EXPERIMENT_KIND_TAG, MODEL_TRAINING_KIND
from mertlab.train.run import train
from probe_tasks import write_pitch_class_task
from sweep_support import tiny_sweep_spec, write_spec
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


@pytest.mark.integration
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


# --------------------------------------------------------------------------- links
RUN_ID = "0123456789abcdef0123456789abcdef"


def test_link_forms():
    base = "http://localhost:5000"
    assert ui_link(base) == f"{base}/#/experiments?workflowType=machine_learning"
    assert (
        ui_link(base, "7") == f"{base}/#/experiments/7/runs?workflowType=machine_learning&viewStateShareKey={VIEW_KEY}"
    )
    assert ui_link(base + "/", "7", view=False) == f"{base}/#/experiments/7/runs?workflowType=machine_learning"
    assert ui_link(base, "7", RUN_ID) == f"{base}/#/experiments/7/runs/{RUN_ID}?workflowType=machine_learning"
    assert (
        ui_link(base, "7", RUN_ID, "compare/my plot.png")
        == f"{base}/#/experiments/7/runs/{RUN_ID}/artifacts/compare/my%20plot.png?workflowType=machine_learning"
    )
    # a tracking server serves its own UI; any other store is shown by `mertlab ui`
    assert ui_base_url("http://mlflow.example.org:8080/") == "http://mlflow.example.org:8080"
    assert ui_base_url("sqlite:////data/mlflow.db") == ui_base_url("file:///data/mlruns") == DEFAULT_UI_URL


def test_closing_lines_without_a_reachable_store_link_the_experiment_list(caplog):
    lines = mlflow_ui.ui_lines("http://127.0.0.1:9", [mlflow_ui.LinkTarget("this run", RUN_ID)], client=_NoStore())
    assert lines == [
        "  the UI at http://127.0.0.1:9:",
        "    http://127.0.0.1:9/#/experiments?workflowType=machine_learning",
    ]


class _NoStore:
    """An MLflow client whose store does not answer."""

    def __getattr__(self, name):
        def fail(*args, **kwargs):
            raise ConnectionError("connection refused")

        return fail


# --------------------------------------------------------------------------- a real sweep
PROBE = {
    "layers": "last",
    "window_seconds": 5.0,
    "baselines": ["chroma"],
    "random_init": True,
    "max_epochs": 3,
    "patience": 2,
}
LINK_LINE = re.compile(r"^\s+(?P<label>[^:]+):\s+(?P<url>https?://\S+)$")


@dataclass
class Store:
    root: Path
    uri: str
    experiment_id: str
    parent_id: str
    children: dict[str, str]  # variant -> run id
    plain_run_id: str
    printed: dict[str, dict[str, str]]  # command -> {label: link}


def run_cli(*argv: str) -> str:
    """``mertlab ARGV`` in this process; what it printed (it must succeed)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(list(argv))
    assert code == 0, out.getvalue()[-3000:]
    return out.getvalue()


def printed_links(output: str) -> dict[str, str]:
    return {m["label"].strip(): m["url"] for m in map(LINK_LINE.match, output.splitlines()) if m}


@pytest.fixture(scope="module")
def store(tmp_path_factory, demo_dir) -> Store:
    """A real two-child sweep with a ``probe:`` section, then one plain run of the same spec, in
    one sqlite store, and the links each command printed (sweep, compare, train, probe)."""
    root = tmp_path_factory.mktemp("ui-sweep")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    write_pitch_class_task(root, clips=24)
    spec = tiny_sweep_spec(
        "ui-sweep",
        demo_dir,
        root,
        uri,
        {"variants": {"base": {}, "cqt_only": {"teachers.rvq": None, "objectives.rvq_pred": None}}},
    )
    spec["probe"] = {"tasks": ["pitch.csv"], **PROBE}
    spec_path = write_spec(root / "sweep.yaml", spec)
    cwd = Path.cwd()
    os.chdir(root)
    try:
        printed = {"sweep": printed_links(run_cli("sweep", str(spec_path), "--no-progress"))}
        train_out = run_cli(
            "train", str(spec_path), "-o", "sweep=null", "-o", "probe=null", "-o", "tracking.run_name=single-run",
            "--no-progress",
        )  # fmt: skip
        printed["train"] = printed_links(train_out)
        printed["compare"] = printed_links(run_cli("compare", "ui-sweep", "--out", str(root / "comparison")))
    finally:
        os.chdir(cwd)
    client = MlflowClient(uri)
    experiment_id = client.get_experiment_by_name("ui-sweep").experiment_id
    runs = client.search_runs([experiment_id])
    parent = next(r for r in runs if "mertlab.sweep.size" in r.data.tags)
    children = {r.data.tags["variant"]: r.info.run_id for r in runs if r.data.tags.get("mlflow.parentRunId")}
    plain = next(r for r in runs if "mertlab.sweep" not in r.data.tags)
    return Store(root, uri, experiment_id, parent.info.run_id, children, plain.info.run_id, printed)


@pytest.mark.integration
def test_every_printed_link_lands_on_the_model_training_view(store):
    runs_table = f"{DEFAULT_UI_URL}/#/experiments/{store.experiment_id}/runs"
    comparison = f"{runs_table}/{store.parent_id}/artifacts/compare/comparison.md?workflowType=machine_learning"
    view = f"{runs_table}?workflowType=machine_learning&viewStateShareKey={VIEW_KEY}"
    assert store.printed["sweep"] == {"the sweep's runs": view, "the comparison": comparison}
    assert store.printed["compare"] == store.printed["sweep"]
    assert store.printed["train"] == {
        "this run": f"{runs_table}/{store.plain_run_id}?workflowType=machine_learning",
        "its experiment's runs": view,
    }
    assert sorted(store.children) == ["base", "cqt_only"]


@pytest.mark.integration
def test_mertlab_probe_prints_the_runs_link(trained, monkeypatch):
    store, _, uri, result = trained
    write_pitch_class_task(store, clips=24)
    monkeypatch.chdir(store)
    checkpoint = result.checkpoint_dir / "last.ckpt"
    out = run_cli(
        "probe", str(checkpoint), "pitch.csv", "--layers", "last", "--max-epochs", "2", "--no-weighted",
        "--no-cache", "--no-progress",
    )  # fmt: skip
    experiment_id = MlflowClient(uri).get_run(result.run_id).info.experiment_id
    runs_table = f"{DEFAULT_UI_URL}/#/experiments/{experiment_id}/runs"
    assert printed_links(out) == {
        "the run": f"{runs_table}/{result.run_id}?workflowType=machine_learning",
        "its experiment's runs": f"{runs_table}?workflowType=machine_learning&viewStateShareKey={VIEW_KEY}",
    }
    _, state = stored_view(MlflowClient(uri), experiment_id)  # the view gained the probe's columns
    assert state["selectedColumns"][0] == "metrics.`probe/pitch/accuracy`" and "groupBy" not in state


def stored_view(client: MlflowClient, experiment_id: str) -> tuple[dict, dict]:
    envelope = json.loads(client.get_experiment(experiment_id).tags[VIEW_TAG_PREFIX + VIEW_KEY])
    return envelope, json.loads(envelope["state"])


@pytest.mark.integration
def test_the_comparison_view_shows_probe_scores_and_summaries_grouped_by_sweep(store):
    client = MlflowClient(store.uri)
    envelope, state = stored_view(client, store.experiment_id)
    strongest = client.get_run(store.children["base"]).data.tags["probe/pitch/strongest_baseline"]
    assert strongest in ("baseline_chroma", "majority")  # the baseline the probe verdict compares against
    metrics = [c[len("metrics.`") : -1] for c in state["selectedColumns"] if c.startswith("metrics.")]
    assert metrics[:4] == [
        "probe/pitch/accuracy",
        "probe/pitch/random_init/accuracy",
        "probe/pitch/accuracy_p_vs_random",
        f"probe/pitch/{strongest}/accuracy",
    ]
    assert metrics[4:] == [
        "summary/final_loss",
        "summary/best_val_loss",
        "summary/max_grad_norm",
        "summary/loss_spikes",
        "summary/nonfinite_steps",
        "summary/skipped_steps",
        "summary/max_attn_logit",
    ]
    assert state["selectedColumns"][len(metrics) :] == [
        "params.`override.objectives.rvq_pred`",
        "params.`override.teachers.rvq`",
    ]
    assert state["columnOrder"] == state["selectedColumns"]
    assert state["orderByKey"] == "metrics.`probe/pitch/accuracy`" and state["orderByAsc"] is False
    assert state["groupBy"]["groupByKeys"] == [{"mode": "tag", "groupByData": "mertlab.sweep"}]
    assert state["groupsExpanded"] == {"tag.mertlab.sweep": True}  # runs of no sweep are listed too
    assert envelope["name"] and envelope["createdAt"] <= envelope["updatedAt"]


def test_refreshing_the_view_writes_what_changed_and_keeps_its_creation_time(tmp_path):
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.create_experiment("plain")
    run = client.create_run(experiment).info.run_id
    client.log_metric(run, "summary/final_loss", 1.0)
    assert refresh_comparison_view(client, experiment)
    first, state = stored_view(client, experiment)
    assert state["selectedColumns"] == ["metrics.`summary/final_loss`"]
    assert state["orderByKey"] == "attributes.start_time" and "groupBy" not in state  # no probe, no sweep
    time.sleep(0.01)
    assert refresh_comparison_view(client, experiment)
    assert stored_view(client, experiment)[0] == first  # up to date: not rewritten
    client.log_metric(run, "probe/genre/roc_auc", 0.7)
    client.log_metric(run, "probe/genre/baseline_mfcc/roc_auc", 0.6)
    client.log_metric(run, "probe/genre/baseline_cqt/roc_auc", 0.65)
    refresh_comparison_view(client, experiment)
    second, state = stored_view(client, experiment)
    assert second["createdAt"] == first["createdAt"] < second["updatedAt"]
    assert state["selectedColumns"] == [  # no strongest-baseline tag (older runs): every baseline
        "metrics.`probe/genre/roc_auc`",
        "metrics.`probe/genre/baseline_cqt/roc_auc`",
        "metrics.`probe/genre/baseline_mfcc/roc_auc`",
        "metrics.`summary/final_loss`",
    ]
    client.set_tag(run, "probe/genre/strongest_baseline", "baseline_cqt")
    refresh_comparison_view(client, experiment)
    assert stored_view(client, experiment)[1]["selectedColumns"][:2] == [
        "metrics.`probe/genre/roc_auc`",
        "metrics.`probe/genre/baseline_cqt/roc_auc`",
    ]


_PROBE_NAMES = (None, "random_init", "baseline_chroma", "baseline_mfcc", "majority", "layer0", "weighted")
_COMPANIONS = ("", "_ci_low", "_ci_high", "_p_vs_random", "_p_vs_baseline")


@settings(max_examples=200, deadline=None)
@given(
    keys=st.sets(
        st.tuples(
            st.sampled_from(["pitch", "key"]),
            st.sampled_from(_PROBE_NAMES),
            st.sampled_from(["accuracy", "f1"]),
            st.sampled_from(_COMPANIONS),
        )
    ),
    strongest=st.dictionaries(st.sampled_from(["pitch", "key"]), st.sampled_from(["baseline_chroma", "majority"])),
)
def test_probe_columns_are_each_scores_random_init_and_strongest_baseline(keys, strongest):
    logged = {
        f"probe/{task}/{probe}/{metric}{suffix}" if probe else f"probe/{task}/{metric}{suffix}"
        for task, probe, metric, suffix in keys
    }
    columns = mlflow_ui.probe_columns(logged | {"loss/total", "summary/final_loss"}, strongest)
    assert len(columns) == len(set(columns)) and set(columns) <= logged
    scores = sorted({(t, m) for t, p, m, suffix in keys if p is None and not suffix})
    expected = []
    for task, metric in scores:  # per score: itself, random init and p-value, the strongest (or every) baseline
        expected.append(f"probe/{task}/{metric}")
        expected += [
            k for k in [f"probe/{task}/random_init/{metric}", f"probe/{task}/{metric}_p_vs_random"] if k in logged
        ]
        chosen = f"probe/{task}/{strongest.get(task)}/{metric}"
        if chosen in logged:
            expected.append(chosen)
        else:
            expected += sorted(
                k for k in logged if k.startswith(f"probe/{task}/baseline_") and k.endswith(f"/{metric}")
            )
    assert columns == expected


def test_a_view_too_large_for_a_tag_loses_widths_then_trailing_columns():
    state = {
        "selectedColumns": [f"metrics.`probe/task{i:04d}/accuracy`" for i in range(400)],
        "columnWidths": {f"metrics.`probe/task{i:04d}/accuracy`": 200 for i in range(400)},
    }
    state["columnOrder"] = state["selectedColumns"]
    fitted = mlflow_ui._fitting(state)
    assert len(mlflow_ui._envelope(fitted, 0, 0)) <= mlflow_ui.MAX_VIEW_TAG_CHARS
    assert fitted["columnWidths"] == {} and 0 < len(fitted["selectedColumns"]) < 400
    assert fitted["selectedColumns"] == state["selectedColumns"][: len(fitted["selectedColumns"])]


def test_newest_experiment_is_the_one_of_the_newest_run(tmp_path):
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert newest_experiment(client).name == "Default"  # a fresh store holds only MLflow's own
    older, newer = client.create_experiment("older"), client.create_experiment("newer")
    assert newest_experiment(client).name == "newer"
    client.create_run(newer)
    time.sleep(0.01)
    client.create_run(older)
    assert newest_experiment(client).name == "older"
    assert newest_experiment(client, "newer").experiment_id == newer
    assert newest_experiment(client, "missing") is None


# --------------------------------------------------------------------------- `mertlab ui`
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read()


@dataclass
class Served:
    base: str  # where the test reaches the server
    printed: list[str]  # the first lines `mertlab ui` printed
    opened: Path  # what `--open` handed to the web browser ($BROWSER) is written here

    def local(self, link: str) -> str:
        """A printed link (``http://localhost:PORT/#/...``) on this server."""
        parts = urlsplit(link)
        return self.base + link[len(f"{parts.scheme}://{parts.netloc}") :]


@contextlib.contextmanager
def serving_ui(uri: str, folder: Path, *options: str):
    """`mertlab ui --open` on a free port, as a user starts it (its web browser a script that
    writes down the URL it is given); yields a :class:`Served` once the UI answers."""
    port = free_port()
    opened = folder / "opened-url.txt"
    browser = folder / "browser.sh"
    browser.write_text(f'#!/bin/sh\necho "$1" >> {opened}\n')
    browser.chmod(0o755)
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
            "--open",
            *options,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
        env={**os.environ, "BROWSER": str(browser)},
    )
    base = f"http://127.0.0.1:{port}"
    try:
        printed = [ui.stdout.readline(), ui.stdout.readline()]
        deadline = time.monotonic() + 180
        while True:
            try:
                get(f"{base}/health")
                break
            except OSError:
                assert time.monotonic() < deadline and ui.poll() is None, f"the UI did not start: {printed}"
                time.sleep(0.5)
        yield Served(base, printed, opened)
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


@pytest.fixture(scope="module")
def served(store, tmp_path_factory):
    with serving_ui(store.uri, tmp_path_factory.mktemp("ui")) as server:
        yield server


@pytest.mark.integration
def test_mertlab_ui_prints_and_opens_the_newest_experiments_runs(store, served):
    port = served.base.rsplit(":", 1)[1]
    assert served.printed[0].startswith(f"MLflow UI for {store.uri}: http://localhost:{port}")
    link = f"http://localhost:{port}/#/experiments/{store.experiment_id}/runs?workflowType=machine_learning"
    assert served.printed[1].strip() == f"experiment 'ui-sweep': {link}&viewStateShareKey={VIEW_KEY}"
    deadline = time.monotonic() + 30
    while not served.opened.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert served.opened.read_text().split() == [served.printed[1].split()[-1]]  # opened once, that link


@pytest.mark.integration
def test_mertlab_ui_serves_the_runs_metrics_and_spec(store, served):
    base, run_id = served.base, store.plain_run_id
    run = json.loads(get(f"{base}/ajax-api/2.0/mlflow/runs/get?run_id={run_id}"))["run"]
    metrics = {m["key"] for m in run["data"]["metrics"]}
    assert {"loss/total", "loss/rvq_pred", "loss/cqt_recon"} <= metrics
    listed = json.loads(get(f"{base}/ajax-api/2.0/mlflow/artifacts/list?run_id={run_id}"))
    assert "spec.yaml" in {f["path"] for f in listed["files"]}
    assert "name: ui-sweep" in get(f"{base}/get-artifact?path=spec.yaml&run_uuid={run_id}").decode()


def test_ui_without_a_store_is_one_clear_error(tmp_path, capsys):
    assert main(["ui", "--tracking-uri", f"sqlite:///{tmp_path / 'none.db'}"]) == 1
    err = capsys.readouterr().err
    assert "no MLflow store at" in err and len(err.strip().splitlines()) == 1


@pytest.mark.integration
def test_ui_for_an_unknown_experiment_is_one_clear_error(store, capsys):
    assert main(["ui", "--tracking-uri", store.uri, "--experiment", "no-such"]) == 1
    err = capsys.readouterr().err
    assert "--experiment: no experiment 'no-such'" in err and "ui-sweep" in err
    assert len(err.strip().splitlines()) == 1


# --------------------------------------------------------------------------- a real browser
NEEDS_BROWSER = os.environ.get("MERTLAB_REQUIRE_SYSTEM_DEPS") == "1"


@pytest.mark.integration
@pytest.mark.skipif(
    CHROMIUM is None and not NEEDS_BROWSER, reason="needs Debian's chromium: `make browser` installs it"
)
def test_a_real_browser_follows_every_printed_link(store, served, screenshot_dir, tmp_path):
    """Each link mertlab printed, opened in headless Chromium with a fresh profile (GenAI is
    MLflow's default there): the runs table in the comparison view lists the sweep's children
    under their sweep with their probe scores as MLflow has them; the parent's artifacts tab
    previews comparison.md and the plots; a run's page lists its loss/* metrics and spec.yaml."""
    client = MlflowClient(store.uri)
    strongest = client.get_run(store.children["base"]).data.tags["probe/pitch/strongest_baseline"]
    probe_columns = [
        f"metrics.`probe/pitch/{name}`" for name in ("accuracy", "random_init/accuracy", f"{strongest}/accuracy")
    ]
    with headless_chromium(tmp_path / "profile") as page:
        page.goto(f"{served.base}/health")  # the UI's origin, to keep MLflow's assistant panel shut
        page.evaluate(
            "localStorage.setItem('mlflow.assistant.fab.autoOpenedOnFirstLoad_v1', 'true');"
            "localStorage.setItem('mlflow.assistant.panelOpen_v1', 'false')"
        )

        # `mertlab ui`'s link (the same as the sweep's and train's "runs" links): the runs table
        assert store.printed["sweep"]["the sweep's runs"] == store.printed["train"]["its experiment's runs"]
        page.goto(served.local(served.printed[1].split()[-1]))
        page.wait_for_text("Group: ui-sweep", "cqt_only", "base", "Additional runs", "probe/pitch/accuracy")
        rows = page.table_rows()
        names = [row.get("attributes.`Run Name`", "").split("\n") for row in rows]
        assert "Group: ui-sweep" in names[0], names  # the sweep's group comes first, expanded:
        assert {n[-1] for n in names[1:4]} == {"base", "cqt_only", "ui-sweep"}, names  # its children, parent
        plain_name = client.get_run(store.plain_run_id).info.run_name
        assert "Additional runs" in names[4] and names[5][-1] == plain_name, names  # and the run of no sweep
        for variant, run_id in store.children.items():
            row = next(r for r in rows[1:4] if r.get("attributes.`Run Name`", "").endswith(variant))
            logged = client.get_run(run_id).data.metrics
            for column in probe_columns:
                assert float(row[column]) == pytest.approx(logged[column[len("metrics.`") : -1]]), (variant, column)
        page.screenshot(screenshot_dir / "mlflow-runs-table.png")

        # the sweep's comparison: comparison.md previewed (rendered) on the parent's artifacts tab
        page.goto(served.local(store.printed["sweep"]["the comparison"]))
        text = page.wait_for_text(f"Parent run {store.parent_id}", "cqt_only", "probe/pitch/accuracy")
        assert "| variant" not in text  # rendered as a table, not shown as Markdown source
        page.screenshot(screenshot_dir / "mlflow-comparison.png")
        for plot in ("final_metrics.png", "probe_pitch_accuracy_layers.png"):
            page.goto(served.local(ui_link(DEFAULT_UI_URL, store.experiment_id, store.parent_id, f"compare/{plot}")))
            page.wait_for(
                "Array.from(document.images).some(i => i.src.startsWith('blob:') && i.naturalWidth >= 300)", plot
            )
        page.screenshot(screenshot_dir / "mlflow-comparison-plot.png")

        # train's run link: the run's overview lists its loss/* metrics; its artifacts, spec.yaml
        page.goto(served.local(store.printed["train"]["this run"]))
        page.wait_for_text("single-run", "Metrics (")
        page.type_into("input[placeholder='Search metrics']", "loss/")  # as a user narrows the list
        page.wait_for("!document.body.innerText.includes('grad_norm/total')", "the metrics search")
        text = page.wait_for_text("loss/total", "loss/rvq_pred", "loss/cqt_recon", "loss/rvq_pred/weighted")
        assert "loss/never_logged" not in text
        page.screenshot(screenshot_dir / "mlflow-run.png")
        page.goto(served.local(ui_link(DEFAULT_UI_URL, store.experiment_id, store.plain_run_id, "spec.yaml")))
        page.wait_for_text("spec.yaml", "name: ui-sweep")
        page.screenshot(screenshot_dir / "mlflow-run-spec.png")
    print(f"screenshots of the MLflow UI: {screenshot_dir}")
