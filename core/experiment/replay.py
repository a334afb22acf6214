"""``mertlab tracking replay RUN_DIR``: send what a run could not send to its tracking store.

A run whose store was unreachable at its end writes what it still held to
``<run folder>/unsent_metrics.jsonl`` (:mod:`mertlab.train.tracking_logger`): metric values, tags,
and an *end* record with the run's final status (and the step of its ``summary/*`` metrics, when
they could not be logged either). Replaying sends them once the store is back:

* metric values the store already holds at that step (for that key) are left out, so a replay
  run twice, or after part of it went through, never gives a step two values;
* tags are set (the newest value of a key wins); the ``summary/*`` metrics are logged when the
  run has none yet; the run gets the final status of the newest end record;
* a replay that sent everything renames the file to ``unsent_metrics.replayed.jsonl``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mertlab.errors import MertlabError
from mertlab.experiment.tracking import (
    MAX_METRICS_PER_BATCH,
    MAX_TAGS_PER_BATCH,
    UNSENT_FILE,
    check_store,
    handled_store_errors,
)

#: What a replayed unsent file is renamed to.
REPLAYED_FILE = "unsent_metrics.replayed.jsonl"


@dataclass
class RunReplay:
    """What one run's part of an unsent file holds, and what replaying it did."""

    run_id: str
    metrics: list[Any] = field(default_factory=list)  # mlflow.entities.Metric, in file order
    tags: dict[str, str] = field(default_factory=dict)
    status: str | None = None
    end_time: int | None = None
    summary_step: int | None = None
    sent: int = 0
    already_there: int = 0


@dataclass
class ReplaySummary:
    """The file replayed, the store, and each run's :class:`RunReplay`."""

    path: Path
    tracking_uri: str
    runs: list[RunReplay]


def unsent_path(run_dir: str | Path) -> Path:
    """The unsent file of ``run_dir`` (a run folder, or the file itself)."""
    path = Path(run_dir)
    if path.is_dir():
        if not (path / UNSENT_FILE).is_file() and (path / REPLAYED_FILE).is_file():
            raise MertlabError(f"{path}: already replayed (see {path / REPLAYED_FILE}); nothing left to send")
        path = path / UNSENT_FILE
    if not path.is_file():
        raise MertlabError(f"{path}: no such file (a run writes {UNSENT_FILE} into its folder when its store is down)")
    return path


def read_unsent(path: Path) -> tuple[list[RunReplay], str | None]:
    """The runs of an unsent file and the store it names; a line that is not a record of it is
    an error naming the file and line."""
    from mlflow.entities import Metric

    runs: dict[str, RunReplay] = {}
    uri = None
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise MertlabError(f"{path}: cannot read ({exc})") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            run = runs.setdefault(str(record["run_id"]), RunReplay(str(record["run_id"])))
            uri = record.get("tracking_uri") or uri
            if "key" in record:
                run.metrics.append(
                    Metric(str(record["key"]), float(record["value"]), int(record["timestamp"]), int(record["step"]))
                )
            elif "tag" in record:
                run.tags[str(record["tag"])] = str(record["value"])
            elif "status" in record:
                run.status, run.end_time = str(record["status"]), int(record["end_time"])
                if record.get("summary_step") is not None:
                    run.summary_step = int(record["summary_step"])
            else:
                raise KeyError("key, tag or status")
        except (ValueError, KeyError, TypeError) as exc:
            raise MertlabError(
                f"{path}:{number}: not a record of an unsent file ({type(exc).__name__}: {exc})"
            ) from None
    return list(runs.values()), uri


def replay(run_dir: str | Path, tracking_uri: str | None = None, connect_timeout: float = 30.0) -> ReplaySummary:
    """Send the unsent file of ``run_dir`` to ``tracking_uri`` (default: the store the file
    names); see the module docstring. The store must answer (one clear error otherwise, nothing
    sent); a run it does not hold is an error naming it."""
    from mlflow.exceptions import MlflowException

    path = unsent_path(run_dir)
    runs, named_uri = read_unsent(path)
    uri = tracking_uri or named_uri
    if not uri:
        raise MertlabError(f"{path}: names no tracking store; pass --tracking-uri")
    client = check_store(uri, connect_timeout)
    for run in runs:
        try:
            client.get_run(run.run_id)
        except MlflowException:
            raise MertlabError(f"MLflow run {run.run_id} (in {path}) not found at {uri}; pass --tracking-uri") from None
    for run in runs:
        with handled_store_errors():
            _replay_run(client, run)
    path.rename(path.with_name(REPLAYED_FILE))
    return ReplaySummary(path, uri, runs)


def _replay_run(client: Any, run: RunReplay) -> None:
    from mlflow.entities import Metric, RunTag

    from mertlab.experiment.run_summary import log_run_summary

    held: dict[str, set[int]] = {}
    new: list[Metric] = []
    for metric in run.metrics:
        if metric.key not in held:
            held[metric.key] = {m.step for m in client.get_metric_history(run.run_id, metric.key)}
        if metric.step in held[metric.key]:
            run.already_there += 1
            continue
        held[metric.key].add(metric.step)  # a step twice in the file: the first value only
        new.append(metric)
    for start in range(0, len(new), MAX_METRICS_PER_BATCH):
        client.log_batch(run.run_id, metrics=new[start : start + MAX_METRICS_PER_BATCH])
    run.sent = len(new)
    tags = [RunTag(k, v) for k, v in run.tags.items()]
    for start in range(0, len(tags), MAX_TAGS_PER_BATCH):
        client.log_batch(run.run_id, tags=tags[start : start + MAX_TAGS_PER_BATCH])
    if run.summary_step is not None and not any(
        k.startswith("summary/") for k in client.get_run(run.run_id).data.metrics
    ):
        log_run_summary(client, run.run_id, run.summary_step)
    if run.status is not None:
        client.set_terminated(run.run_id, run.status, end_time=run.end_time or int(time.time() * 1000))
