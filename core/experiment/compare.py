"""``mertlab compare``: the child runs of a sweep side by side -- table, CSV, Markdown, plots.

Everything is read back from MLflow: a row per child with its variant, status, overridden
params (``override.*``), the final and best value of each selected metric (default
``loss/*``, ``val/loss/*``, ``probe/*/*``; best = lowest for names containing ``loss``,
highest otherwise) -- a probe score once, its latest value with its 95% interval (a best over
checkpoints would be chosen on the test split) --, and the stability summary of
:mod:`mertlab.experiment.run_summary` computed from the metric histories (so unfinished runs
get one too). Plots (PNG, matplotlib's Agg canvas): overlaid
loss curves per objective (validation dashed), overlaid ``grad_norm/total`` curves, and bars
of the final values per variant. With a parent run the files are logged as its artifacts
under ``compare/``, where the MLflow UI shows them on the parent's page.
"""

from __future__ import annotations

import csv
import math
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mertlab.errors import MertlabError
from mertlab.experiment import metric_names as M
from mertlab.experiment.plotting import colors, figure
from mertlab.experiment.run_summary import Point, fetch_histories, needed_metrics, reduce_values, summarize
from mertlab.experiment.sweep import INDEX_TAG, OVERRIDE_PARAM_PREFIX, VARIANT_TAG, children_of, sweep_parents
from mertlab.experiment.tracking import default_tracking_uri
from mertlab.probe.plots import ChildLayers, sweep_layer_plot

#: ``*`` matches within one ``/``-separated segment, ``**`` across segments. Probes: per task the
#: best probe (``probe/<task>/<metric>``), the best single layer, the weighted sum, random init
#: and the baselines -- not every layer's score (those go to the per-layer figure).
PROBE_METRICS = (
    "probe/*/*",
    "probe/*/best_layer/*",
    "probe/*/weighted/*",
    "probe/*/random_init/*",
    "probe/*/baseline_*/*",
    "probe/*/majority/*",
    "probe/*/chance/*",
)
DEFAULT_METRICS = (*PROBE_METRICS, "loss/*", "val/loss/*")
#: Row order of a task's probe metrics: the scores first, then what they must beat.
_PROBE_ORDER = ("", "best_layer", "weighted", "random_init", "baseline_", "majority", "chance")
#: Stability columns (``summary/*`` names, as training logs them at the end of a run).
STABILITY_COLUMNS = (
    M.SUMMARY_MAX_GRAD_NORM,
    M.SUMMARY_LOSS_SPIKES,
    M.SUMMARY_NONFINITE_STEPS,
    M.SUMMARY_SKIPPED_STEPS,
    M.SUMMARY_MAX_ATTN_LOGIT,
)
ARTIFACT_DIR = "compare"
MARKDOWN_FILE = "comparison.md"
_RUN_ID = re.compile(r"^[0-9a-f]{32}$")
_CURVE_PREFIXES = ("loss/", "val/loss/", M.GRAD_NORM_TOTAL)


def metric_order(metric: str) -> tuple[Any, ...]:
    """Sort key of tabulated metrics: probe scores first (per task: best, best layer, weighted,
    random init, baselines), then everything else by name."""
    parts = metric.split("/")
    if parts[0] != "probe" or len(parts) < 3:
        return (1, metric)
    probe = parts[2] if len(parts) > 3 else ""
    ranks = [i for i, prefix in enumerate(_PROBE_ORDER) if (probe.startswith(prefix) if prefix else not probe)]
    return (0, parts[1], ranks[0] if ranks else len(_PROBE_ORDER), metric)


def best_is_lowest(metric: str) -> bool:
    """Losses are better low; scores (accuracy, AUC, R^2 ...) high."""
    return "loss" in metric


@dataclass(frozen=True)
class Score:
    """A probe score with its 95% interval (None bounds when the run logged none)."""

    value: float
    low: float | None = None
    high: float | None = None

    def __str__(self) -> str:
        if self.low is None or self.high is None:
            return fmt(self.value)
        return f"{fmt(self.value)} [{fmt(self.low)}, {fmt(self.high)}]"


def is_probe_score(metric: str) -> bool:
    """Probe scores are shown once (latest value, interval), not as final and best."""
    return metric.startswith("probe/")


def _interval_bound(metric: str) -> bool:
    found = M.probe_score_of(metric)
    return found is not None and found[1] in (M.CI_LOW, M.CI_HIGH)


@dataclass
class RunRow:
    """One compared run, as read back from MLflow."""

    run_id: str
    variant: str
    status: str
    overrides: dict[str, str]
    final: dict[str, float]
    best: dict[str, float]
    summary: dict[str, float]
    histories: dict[str, list[Point]] = field(repr=False)
    probes: dict[str, float] = field(default_factory=dict, repr=False)  # every probe/* metric (latest value)

    def score(self, metric: str) -> Score | None:
        """A probe score of this run with its interval (None where the run has none)."""
        if metric not in self.final:
            return None
        low, high = (self.probes.get(metric + suffix) for suffix in (M.CI_LOW, M.CI_HIGH))
        return Score(self.final[metric], low, high)


@dataclass
class Comparison:
    title: str
    tracking_uri: str
    parent_run_id: str | None
    rows: list[RunRow]
    metrics: list[str]  # tabulated metrics (final and best; a probe score once, with its interval)
    note: str = ""

    def override_keys(self) -> list[str]:
        return sorted({k for r in self.rows for k in r.overrides})

    def varying_overrides(self) -> list[str]:
        """Override keys whose value differs between runs (the rest is shared by all)."""
        return [k for k in self.override_keys() if len({r.overrides.get(k) for r in self.rows}) > 1]

    def shared_overrides(self) -> dict[str, str]:
        varying = set(self.varying_overrides())
        return {k: self.rows[0].overrides[k] for k in self.override_keys() if k not in varying} if self.rows else {}

    def records(self, all_overrides: bool = True) -> tuple[list[str], list[list[Any]]]:
        """Header and one row of raw values (str, float, :class:`Score` or None) per run: each
        metric's final and best value, a probe score once (a :class:`Score`)."""
        keys = self.override_keys() if all_overrides else self.varying_overrides()
        header = ["variant", "status", "run_id", *keys]
        for metric in self.metrics:
            header += [metric] if is_probe_score(metric) else [f"{metric} final", f"{metric} best"]
        header += list(STABILITY_COLUMNS)
        rows = []
        for r in self.rows:
            row: list[Any] = [r.variant, r.status, r.run_id, *(r.overrides.get(k) for k in keys)]
            for metric in self.metrics:
                row += [r.score(metric)] if is_probe_score(metric) else [r.final.get(metric), r.best.get(metric)]
            row += [r.summary.get(c) for c in STABILITY_COLUMNS]
            rows.append(row)
        return header, rows


# --------------------------------------------------------------------------- loading
def _client(tracking_uri: str) -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri)


def _variant(run: Any) -> str:
    return run.data.tags.get(VARIANT_TAG) or run.info.run_name or run.info.run_id[:8]


def find_runs(client: Any, target: str, tracking_uri: str) -> tuple[str, Any | None, list[Any], str]:
    """``(title, parent run or None, runs to compare, note)`` for a parent run id or an
    experiment name (its newest sweep parent, else all its runs)."""
    from mlflow.exceptions import MlflowException

    if _RUN_ID.match(target):
        try:
            parent = client.get_run(target)
        except MlflowException:
            raise MertlabError(f"no MLflow run {target} in {tracking_uri}") from None
        runs = children_of(client, parent)
        if not runs:
            raise MertlabError(f"run {target} has no child runs; give a sweep's parent run id or an experiment name")
        return parent.info.run_name or target, parent, runs, ""
    experiment = client.get_experiment_by_name(target)
    if experiment is None:
        raise MertlabError(f"'{target}' is neither a run id nor an experiment in {tracking_uri}")
    parents = sweep_parents(client, experiment.experiment_id)
    if parents:
        note = f"newest of {len(parents)} sweeps in '{target}'" if len(parents) > 1 else ""
        return parents[0].info.run_name or target, parents[0], children_of(client, parents[0]), note
    runs = client.search_runs([experiment.experiment_id], max_results=50000)
    if not runs:
        raise MertlabError(f"experiment '{target}' has no runs")
    return target, None, runs, ""


def metric_pattern(pattern: str) -> re.Pattern[str]:
    """``loss/*`` -> a regex where ``*`` stays within a segment and ``**`` crosses segments."""
    parts = re.split(r"(\*\*|\*|\?)", pattern)
    wild = {"**": ".*", "*": "[^/]*", "?": "[^/]"}
    return re.compile("".join(wild.get(part, re.escape(part)) for part in parts) + r"\Z")


def _select(keys: list[str], patterns: tuple[str, ...] | list[str]) -> list[str]:
    compiled = [metric_pattern(p) for p in patterns]
    return [k for k in keys if any(c.match(k) for c in compiled)]


def load_comparison(
    target: str, tracking_uri: str | None = None, metrics: tuple[str, ...] | list[str] = ()
) -> Comparison:
    """Read every compared run back from MLflow (``metrics``: name patterns, default
    :data:`DEFAULT_METRICS`)."""

    tracking_uri = tracking_uri or default_tracking_uri()
    client = _client(tracking_uri)
    title, parent, runs, note = find_runs(client, target, tracking_uri)
    runs = sorted(runs, key=lambda r: (int(r.data.tags.get(INDEX_TAG, 1 << 30)), r.info.start_time or 0))
    patterns = tuple(metrics) or DEFAULT_METRICS
    rows, tabulated = [], []
    for run in runs:
        logged = sorted(run.data.metrics)
        selected = [k for k in _select(logged, patterns) if not _interval_bound(k)]  # bounds go with their score
        curves = [k for k in logged if k.startswith(_CURVE_PREFIXES)]
        histories = fetch_histories(client, run.info.run_id, sorted({*selected, *curves, *needed_metrics(logged)}))
        best = {}
        for k in selected:
            value = reduce_values(histories[k], "min" if best_is_lowest(k) else "max")
            if value is not None:
                best[k] = value
        rows.append(
            RunRow(
                run_id=run.info.run_id,
                variant=_variant(run),
                status=run.info.status,
                overrides={
                    k[len(OVERRIDE_PARAM_PREFIX) :]: v
                    for k, v in run.data.params.items()
                    if k.startswith(OVERRIDE_PARAM_PREFIX)
                },
                final={k: run.data.metrics[k] for k in selected},
                best=best,
                summary=summarize(histories),
                histories=histories,
                probes={k: v for k, v in run.data.metrics.items() if k.startswith("probe/")},
            )
        )
        tabulated += [k for k in selected if k not in tabulated]
    return Comparison(
        title, tracking_uri, parent.info.run_id if parent else None, rows, sorted(tabulated, key=metric_order), note
    )


# --------------------------------------------------------------------------- rendering
def fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, Score):
        return str(value)
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    return str(value)


def _grid(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(c) for c in col) for col in zip(header, *rows, strict=True)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in (header, *rows)]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def per_run_columns(comparison: Comparison) -> tuple[list[str], list[list[str]]]:
    """The table with one column per run (ablations have few runs and many metrics): header
    ``variant, <run>...``, then one row per field (status, run id, overrides, metrics...)."""
    header, rows = comparison.records(all_overrides=False)
    columns = [[fmt(v) for v in row] for row in rows]
    body = [[name, *(col[i] for col in columns)] for i, name in enumerate(header[1:], 1)]
    return ["variant", *(col[0] for col in columns)], body


def to_text(comparison: Comparison) -> str:
    """Terminal table, one column per run (:func:`per_run_columns`)."""
    header, body = per_run_columns(comparison)
    body[1][1:] = [run_id[:8] for run_id in body[1][1:]]  # short run ids; the files have them in full
    text = _grid(header, body)
    shared = comparison.shared_overrides()
    if shared:
        text += "\nshared overrides: " + ", ".join(f"{k}={v}" for k, v in shared.items())
    return text


def to_markdown(comparison: Comparison) -> str:
    """``comparison.md``: title, parent run, shared overrides, and the table with one column per
    run (:func:`per_run_columns`), which fits the MLflow UI's artifact preview."""
    header, body = per_run_columns(comparison)
    lines = [f"# {comparison.title}", ""]
    if comparison.parent_run_id:
        lines += [f"Parent run `{comparison.parent_run_id}`, {len(header) - 1} child runs.", ""]
    shared = comparison.shared_overrides()
    if shared:
        lines += ["Shared overrides: " + ", ".join(f"`{k}={v}`" for k, v in shared.items()), ""]
    esc = lambda s: s.replace("|", "\\|")  # noqa: E731
    lines.append("| " + " | ".join(esc(h) for h in header) + " |")
    lines.append("|" + "---|" * len(header))
    lines += ["| " + " | ".join(esc(cell) for cell in row) + " |" for row in body]
    return "\n".join(lines) + "\n"


def write_csv(comparison: Comparison, path: Path) -> Path:
    """One row per run; a probe score in three columns: ``<metric>``, ``<metric> ci_low``, ``<metric> ci_high``."""
    header, rows = comparison.records(all_overrides=True)
    scores = {i for i, name in enumerate(header) if is_probe_score(name)}
    wide_header = [
        c
        for i, name in enumerate(header)
        for c in ([name, f"{name} ci_low", f"{name} ci_high"] if i in scores else [name])
    ]

    def cells(i: int, value: Any) -> list[Any]:
        if i not in scores:
            return ["" if value is None else value]
        if value is None:
            return ["", "", ""]
        return [value.value, *("" if b is None else b for b in (value.low, value.high))]

    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(wide_header)
        writer.writerows([[c for i, v in enumerate(row) for c in cells(i, v)] for row in rows])
    return path


# --------------------------------------------------------------------------- plots
def _file_name(metric: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", metric).strip("_") + ".png"


def _curves(comparison: Comparison, metric: str, out_dir: Path, log_y: bool = False) -> Path | None:
    palette = colors(len(comparison.rows))
    fig = figure(8, 4.5)
    ax = fig.subplots()
    drawn = False
    for row, color in zip(comparison.rows, palette, strict=True):
        for key, style in ((metric, "-"), (M.val(metric), "--")):
            points = [p for p in row.histories.get(key, []) if math.isfinite(p.value)]
            if points:
                label = row.variant if key == metric else f"{row.variant} (val)"
                ax.plot(
                    [p.step for p in points],
                    [p.value for p in points],
                    style,
                    color=color,
                    label=label,
                    marker="o" if len(points) < 3 else None,
                )
                drawn = True
    if not drawn:
        return None
    if log_y and all(p.value > 0 for r in comparison.rows for p in r.histories.get(metric, [])):
        ax.set_yscale("log")
    ax.set_title(f"{metric} ({comparison.title})")
    ax.set_xlabel("step")
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    path = out_dir / _file_name(metric)
    fig.savefig(path, dpi=100)
    return path


def _bars(comparison: Comparison, out_dir: Path) -> Path | None:
    """Final value of each tabulated metric, and the stability summaries that are not all 0."""
    finals = [{**r.final, **r.summary} for r in comparison.rows]
    stability = [c for c in STABILITY_COLUMNS if any(f.get(c) for f in finals)]
    metrics = [m for m in (*comparison.metrics, *stability) if any(m in f for f in finals)]
    if not metrics:
        return None
    ncols = min(3, len(metrics))
    nrows = math.ceil(len(metrics) / ncols)
    n = len(comparison.rows)
    fig = figure(max(4.0, 0.6 * n + 2) * ncols, 3.2 * nrows)
    axes = fig.subplots(nrows, ncols, squeeze=False).flatten()
    palette = colors(n)
    names = [r.variant for r in comparison.rows]
    for ax, metric in zip(axes, metrics, strict=False):
        values = [f.get(metric, math.nan) for f in finals]
        ax.bar(range(n), values, color=palette)
        ax.set_title(metric if metric in STABILITY_COLUMNS else f"{metric} (final)", fontsize="medium")
        ax.set_xticks(range(n), names, rotation=30 if n > 2 else 0, ha="right" if n > 2 else "center", fontsize="small")
        ax.grid(axis="y", alpha=0.3)
    for ax in axes[len(metrics) :]:
        ax.set_visible(False)
    path = out_dir / "final_metrics.png"
    fig.savefig(path, dpi=100)
    return path


_BASELINES = ("baseline_", "majority", "chance")
_LAYER_METRIC = re.compile(r"probe/(?P<task>[^/]+)/layer(?P<layer>\d+)/(?P<metric>[^/]+)\Z")


def _probe_layers(comparison: Comparison, out_dir: Path) -> list[Path]:
    """Per task and metric: one figure of every child's test score by layer
    (``probe_<task>_<metric>_layers.png``), weighted sums and baselines as horizontal lines."""

    found: dict[tuple[str, str], list[ChildLayers]] = {}
    for row in comparison.rows:
        per_task: dict[tuple[str, str], ChildLayers] = {}
        for key, value in row.probes.items():
            match = _LAYER_METRIC.match(key)
            if match:
                task, metric = match["task"], match["metric"]
                child = per_task.setdefault((task, metric), ChildLayers(row.variant, {}))
                child.layers[int(match["layer"])] = value
        for (task, metric), child in per_task.items():
            child.weighted = row.probes.get(f"probe/{task}/weighted/{metric}")
            child.baselines = {  # model-independent: the same for every child
                parts[2]: value
                for parts, value in ((k.split("/"), v) for k, v in sorted(row.probes.items()))
                if len(parts) == 4 and parts[1] == task and parts[3] == metric and parts[2].startswith(_BASELINES)
            }
            found.setdefault((task, metric), []).append(child)
    return [
        sweep_layer_plot(task, metric, children, out_dir / _file_name(f"probe_{task}_{metric}_layers"))
        for (task, metric), children in sorted(found.items())
    ]


def plot(comparison: Comparison, out_dir: Path) -> list[Path]:
    """Loss curves per objective, grad-norm curves, final-value bars (probe scores first) and
    the probes' per-layer figures, as PNG files."""
    losses = sorted({k for r in comparison.rows for k in r.histories if k.startswith("loss/")})
    paths = [_curves(comparison, k, out_dir) for k in losses]
    paths.append(_curves(comparison, M.GRAD_NORM_TOTAL, out_dir, log_y=True))
    paths.append(_bars(comparison, out_dir))
    paths += _probe_layers(comparison, out_dir)
    return [p for p in paths if p is not None]


# --------------------------------------------------------------------------- the command
@dataclass
class CompareResult:
    comparison: Comparison
    out_dir: Path | None  # where the files were written (None: only logged to the parent run)
    files: list[str]  # file names: comparison.csv, comparison.md, *.png
    logged_to: str | None  # parent run id whose artifacts under compare/ hold the files


def compare(
    target: str,
    tracking_uri: str | None = None,
    metrics: tuple[str, ...] | list[str] = (),
    out_dir: str | Path | None = None,
    log_artifacts: bool = True,
) -> CompareResult:
    """:func:`load_comparison`, then :func:`write_comparison`."""
    return write_comparison(load_comparison(target, tracking_uri, metrics), out_dir, log_artifacts)


def write_comparison(
    comparison: Comparison, out_dir: str | Path | None = None, log_artifacts: bool = True
) -> CompareResult:
    """Write ``comparison.csv``/``comparison.md`` and the plots to ``out_dir`` (a temporary
    folder when None), and log them to the parent run when there is one."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(out_dir) if out_dir is not None else Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        files = [write_csv(comparison, folder / "comparison.csv")]
        (folder / MARKDOWN_FILE).write_text(to_markdown(comparison))
        files.append(folder / MARKDOWN_FILE)
        files += plot(comparison, folder)
        logged_to = None
        if log_artifacts and comparison.parent_run_id:
            client = _client(comparison.tracking_uri)
            for path in files:
                client.log_artifact(comparison.parent_run_id, str(path), ARTIFACT_DIR)
            logged_to = comparison.parent_run_id
    return CompareResult(comparison, Path(out_dir) if out_dir is not None else None, [p.name for p in files], logged_to)
