"""What mertlab shows in the MLflow UI: deep links into its model-training view, and the
comparison view of each experiment's runs table.

**Links.** Every URL mertlab prints comes from :func:`ui_link`. MLflow 3's UI opens an
experiment in its GenAI (traces) view unless the URL says ``workflowType=machine_learning`` (the
experiment's ``mlflow.experimentKind`` tag only applies when it is opened from the experiment
list), so every link carries it:

* runs table: ``<base>/#/experiments/<id>/runs?workflowType=machine_learning&viewStateShareKey=mertlab``
* a run: ``<base>/#/experiments/<id>/runs/<run id>?workflowType=machine_learning``
* an artifact, previewed on the run's artifacts tab:
  ``<base>/#/experiments/<id>/runs/<run id>/artifacts/<path>?workflowType=machine_learning``

**The comparison view.** MLflow has no per-experiment default for the runs table's columns,
sorting or grouping (they live in each browser's local storage; a fresh browser shows no metric
at all). What a client can set is a *saved view*: an experiment tag
``mlflow.sharedViewState.<key>`` holding the table state, listed under the runs table's "Views"
menu and opened by ``viewStateShareKey=<key>`` in the URL. :func:`refresh_comparison_view`
writes the view ``mertlab`` from the experiment's runs: the probe scores (per task the best
probe, random init and the strongest baseline) and the ``summary/*`` metrics as the visible
columns, then the sweep overrides; runs grouped by sweep (``mertlab.sweep``: each sweep's parent
and children in one expanded group); sorted by the first probe score, best first. MLflow does not
let a view expand a parent run's nested children (it leaves ``runsExpanded`` out of saved
views), hence the grouping.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

from mertlab.experiment import metric_names as M
from mertlab.experiment.tracking import ui_command

log = logging.getLogger(__name__)

#: Where ``mertlab ui`` serves the UI unless told otherwise (``--host``/``--port``).
DEFAULT_UI_URL = "http://localhost:5000"
WORKFLOW_PARAM = "workflowType=machine_learning"
VIEW_KEY = "mertlab"
VIEW_NAME = "mertlab: probe scores and run summaries"
#: Experiment tag prefix of MLflow's saved views of the runs table, and its value limit.
VIEW_TAG_PREFIX = "mlflow.sharedViewState."
MAX_VIEW_TAG_CHARS = 20000
SWEEP_GROUP_TAG = "mertlab.sweep"
OVERRIDE_PARAM_PREFIX = "override."
#: Summary metrics in the order training logs them; others under ``summary/`` follow by name.
SUMMARY_ORDER = (
    M.SUMMARY_FINAL_LOSS,
    M.SUMMARY_BEST_VAL_LOSS,
    M.SUMMARY_MAX_GRAD_NORM,
    M.SUMMARY_LOSS_SPIKES,
    M.SUMMARY_NONFINITE_STEPS,
    M.SUMMARY_SKIPPED_STEPS,
    M.SUMMARY_MAX_ATTN_LOGIT,
)
_PROBE_SCORE = re.compile(r"probe/(?P<task>[^/]+)/(?P<metric>[^/]+)\Z")


# --------------------------------------------------------------------------- links
def ui_base_url(tracking_uri: str) -> str:
    """The UI serving ``tracking_uri``: an ``http(s)://`` tracking server serves its own UI; any
    other store is shown by ``mertlab ui`` (:data:`DEFAULT_UI_URL`)."""
    if urlsplit(tracking_uri).scheme in ("http", "https"):
        return tracking_uri.rstrip("/")
    return DEFAULT_UI_URL


def ui_link(
    base_url: str,
    experiment_id: str | None = None,
    run_id: str | None = None,
    artifact: str | None = None,
    view: bool = True,
) -> str:
    """A deep link into the model-training view of the UI at ``base_url``: the experiment list
    (no ``experiment_id``), the experiment's runs table (in the comparison view when ``view``),
    a run's overview, or one of its artifacts previewed on its artifacts tab."""
    base = base_url.rstrip("/")
    if experiment_id is None:
        return f"{base}/#/experiments?{WORKFLOW_PARAM}"
    page = f"{base}/#/experiments/{experiment_id}/runs"
    if run_id is None:
        return f"{page}?{WORKFLOW_PARAM}" + (f"&viewStateShareKey={VIEW_KEY}" if view else "")
    page += f"/{run_id}"
    if artifact:
        page += "/artifacts/" + quote(artifact.strip("/"))
    return f"{page}?{WORKFLOW_PARAM}"


@dataclass(frozen=True)
class LinkTarget:
    """One line of :func:`ui_lines`: ``label: <link>`` to a run (or one of its artifacts), or to
    the experiment's runs table when ``run_id`` is None."""

    label: str
    run_id: str | None = None
    artifact: str | None = None


def ui_lines(
    tracking_uri: str,
    targets: Sequence[LinkTarget],
    experiment_id: str | None = None,
    client: Any = None,
    indent: str = "  ",
) -> list[str]:
    """The closing lines of a command: how to open the UI, then one deep link per target (the
    experiment: ``experiment_id``, else the first target run's). The experiment's comparison view
    is refreshed first, so its runs-table link opens it; if the store refuses, the links go to
    the plain runs table (and without an experiment, to the experiment list)."""
    if client is None:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri)
    base = ui_base_url(tracking_uri)
    first_run = next((t.run_id for t in targets if t.run_id), None)
    if experiment_id is None and first_run is not None:
        try:
            experiment_id = client.get_run(first_run).info.experiment_id
        except Exception as exc:  # noqa: BLE001 - the store went away: the experiment list instead
            log.warning("run %s not found in %s for its UI link: %s", first_run, tracking_uri, exc)
    view = experiment_id is not None and refresh_comparison_view_safely(client, experiment_id)
    opening = f"open the UI: {ui_command(tracking_uri)}   then" if base == DEFAULT_UI_URL else f"the UI at {base}:"
    lines = [indent + opening]
    if experiment_id is None:
        return [*lines, f"{indent}  {ui_link(base)}"]
    width = max(len(t.label) for t in targets) if targets else 0
    for target in targets:
        link = ui_link(base, experiment_id, target.run_id, target.artifact, view=view)
        lines.append(f"{indent}  {(target.label + ':').ljust(width + 1)} {link}")
    return lines


def newest_experiment(client: Any, name: str | None = None) -> Any | None:
    """Experiment ``name`` (None if there is none), or else the experiment of the newest run
    (the newest experiment when there is no run at all; None in an empty store)."""
    if name is not None:
        return client.get_experiment_by_name(name)
    experiments = client.search_experiments(order_by=["creation_time DESC"], max_results=1000)
    if not experiments:
        return None
    ids = [e.experiment_id for e in experiments]
    newest_run = None
    for start in range(0, len(ids), 100):  # MLflow searches at most 100 experiments at once
        runs = client.search_runs(ids[start : start + 100], order_by=["attributes.start_time DESC"], max_results=1)
        if runs and (newest_run is None or (runs[0].info.start_time or 0) > (newest_run.info.start_time or 0)):
            newest_run = runs[0]
    if newest_run is not None:
        return next(e for e in experiments if e.experiment_id == newest_run.info.experiment_id)
    named = [e for e in experiments if e.name != "Default"]
    return (named or experiments)[0]


# --------------------------------------------------------------------------- the comparison view
def _column(kind: str, key: str) -> str:
    """The runs table's column id (``metrics.`loss/total```, ``params.`override.optim.lr```)."""
    return f"{kind}.`{key}`"


def probe_columns(metric_keys: Iterable[str], strongest: dict[str, str]) -> list[str]:
    """Per task and metric: the best probe's score, random init and the paired test's p-value
    against it, and the strongest baseline (``strongest[task]``, as the probe verdict chose it;
    every logged baseline when unknown). A score's interval and p-values are not scores."""
    keys = set(metric_keys)
    scores = sorted(
        (m["task"], m["metric"]) for m in map(_PROBE_SCORE.match, keys) if m and M.probe_score_of(m[0]) is None
    )
    columns = []
    for task, metric in scores:
        columns.append(M.probe(task, metric))
        random_init = (M.probe(task, metric, "random_init"), M.probe_companion(task, metric, M.P_VS_RANDOM))
        columns += [k for k in random_init if k in keys]
        baseline = strongest.get(task)
        if baseline and M.probe(task, metric, baseline) in keys:
            columns.append(M.probe(task, metric, baseline))
        else:
            columns += sorted(
                k for k in keys if re.fullmatch(rf"probe/{re.escape(task)}/baseline_[^/]+/{re.escape(metric)}", k)
            )
    return columns


def summary_columns(metric_keys: Iterable[str]) -> list[str]:
    keys = set(metric_keys)
    known = [k for k in SUMMARY_ORDER if k in keys]
    return known + sorted(k for k in keys if k.startswith(M.SUMMARY_PREFIX) and k not in SUMMARY_ORDER)


def _width(name: str) -> int:
    """Pixels that show a column's header in full (the UI's default truncates at ~90 px)."""
    return min(320, max(110, 7 * len(name) + 36))


def comparison_view_state(runs: Sequence[Any]) -> dict[str, Any]:
    """The runs table state of the comparison view of ``runs`` (MLflow entities)."""
    metric_keys = {k for r in runs for k in r.data.metrics}
    strongest: dict[str, str] = {}
    for run in sorted(runs, key=lambda r: r.info.start_time or 0):  # the newest run's choice wins
        for tag, value in run.data.tags.items():
            task = tag.split("/")[1] if tag.count("/") == 2 else None
            if task and tag == M.probe_strongest_baseline_tag(task):
                strongest[task] = value
    probes = probe_columns(metric_keys, strongest)
    metrics = probes + summary_columns(metric_keys)
    params = sorted({k for r in runs for k in r.data.params if k.startswith(OVERRIDE_PARAM_PREFIX)})
    columns = [_column("metrics", k) for k in metrics] + [_column("params", k) for k in params]
    state: dict[str, Any] = {
        "selectedColumns": columns,
        "columnOrder": columns,
        "columnWidths": {c: _width(k) for c, k in zip(columns, [*metrics, *params], strict=True)},
        "searchFilter": "",
        "orderByKey": _column("metrics", probes[0]) if probes else "attributes.start_time",
        "orderByAsc": False,
    }
    if any(SWEEP_GROUP_TAG in r.data.tags for r in runs):
        state["groupBy"] = {
            "aggregateFunction": "max",
            "groupByKeys": [{"mode": "tag", "groupByData": SWEEP_GROUP_TAG}],
        }
        state["groupsExpanded"] = {f"tag.{SWEEP_GROUP_TAG}": True}  # runs of no sweep: shown too
    return state


def _envelope(state: dict[str, Any], created_ms: int, updated_ms: int) -> str:
    """MLflow's saved-view tag value: ``{name, createdAt, updatedAt, state}`` (``state`` is JSON text)."""
    return json.dumps({"name": VIEW_NAME, "createdAt": created_ms, "updatedAt": updated_ms, "state": json.dumps(state)})


def _fitting(state: dict[str, Any]) -> dict[str, Any]:
    """``state`` within MLflow's tag value limit: column widths go first, then trailing columns."""
    state = dict(state)
    if len(_envelope(state, 0, 0)) > MAX_VIEW_TAG_CHARS:
        state["columnWidths"] = {}
    while len(_envelope(state, 0, 0)) > MAX_VIEW_TAG_CHARS and state["selectedColumns"]:
        state["selectedColumns"] = state["columnOrder"] = state["selectedColumns"][:-1]
    return state


def refresh_comparison_view(client: Any, experiment_id: str) -> bool:
    """Write (or update) the experiment's comparison view from its active runs; True when the
    view exists afterwards. Nothing is written when the view is already up to date."""
    runs = client.search_runs([experiment_id], max_results=50000)
    state = _fitting(comparison_view_state(runs))
    tag = VIEW_TAG_PREFIX + VIEW_KEY
    current = client.get_experiment(experiment_id).tags.get(tag)
    now = int(time.time() * 1000)
    created = now
    if current:
        try:
            stored = json.loads(current)
            if json.loads(stored["state"]) == state:
                return True
            created = int(stored.get("createdAt", now))
        except (ValueError, KeyError, TypeError):
            pass  # not a view this version wrote: replaced
    client.set_experiment_tag(experiment_id, tag, _envelope(state, created, now))
    return True


def refresh_comparison_view_safely(client: Any, experiment_id: str) -> bool:
    """:func:`refresh_comparison_view`, or False (with a warning) when the store refuses: a
    finished command must not fail over its closing links."""
    try:
        return refresh_comparison_view(client, experiment_id)
    except Exception as exc:  # noqa: BLE001 - any store failure: links without the view
        log.warning("the MLflow comparison view of experiment %s was not updated: %s", experiment_id, exc)
        return False


# --------------------------------------------------------------------------- the browser
def open_when_up(link: str, health_url: str, server: Any, timeout: float = 300.0) -> threading.Thread:
    """Open ``link`` in the user's web browser (Python's :mod:`webbrowser`: ``$BROWSER``, else the
    desktop's) once ``health_url`` answers, in a background thread; gives up when the ``server``
    process (a :class:`subprocess.Popen`) ends or after ``timeout`` seconds."""
    import urllib.request
    import webbrowser

    def wait_then_open() -> None:
        deadline = time.monotonic() + timeout
        while server.poll() is None and time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(health_url, timeout=5):
                    pass
            except OSError:
                time.sleep(0.5)
                continue
            if not webbrowser.open(link):
                log.warning("no web browser to open %s", link)
            return

    thread = threading.Thread(target=wait_then_open, name="mertlab-open-ui", daemon=True)
    thread.start()
    return thread
