"""An MLflow logger for long runs: tracking outages never stop or stall training.

:class:`ResilientMLFlowLogger` is Lightning's ``MLFlowLogger`` with its metric and tag writes
moved to a background sender:

* ``log_metrics``/``set_tag`` only queue (with the time they were logged); a daemon thread sends
  the queue in batches. When the store is locked (sqlite) or unreachable (server down) the
  batch stays queued and is retried every ``retry_seconds``; one warning says so, one more when
  the store is back. Training (and checkpointing) never waits on it.
* A resumed run re-does the steps between its checkpoint and the interruption; steps the store
  already holds for a metric (``skip_logged_steps``) are not logged again, so no step has two
  values (the re-done steps compute the same values: resume is exact).
* ``finalize`` waits at most ``flush_timeout`` seconds for the queue; what could still not be
  sent is written to ``unsent_file`` (JSON lines) and named in a warning, never dropped silently.
  A run status the store did not take is written there too (an *end* record), so the run is not
  taken for a crashed one; ``mertlab tracking replay`` (:mod:`mertlab.experiment.replay`) sends
  the file later.
* While the store fails, MLflow's own loggers (whose tracebacks repeat what the one warning
  says) are silenced for these calls (:func:`handled_store_errors`).
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

from lightning.pytorch.loggers import MLFlowLogger
from lightning.pytorch.utilities import rank_zero_only

from mertlab.errors import MertlabError
from mertlab.experiment.tracking import MAX_METRICS_PER_BATCH, MAX_TAGS_PER_BATCH, handled_store_errors

log = logging.getLogger(__name__)


def logged_steps(client: Any, run_id: str) -> dict[str, int]:
    """The highest step the store holds for each metric of ``run_id``."""
    keys = client.get_run(run_id).data.metrics
    return {key: max((m.step for m in client.get_metric_history(run_id, key)), default=-1) for key in keys}


class ResilientMLFlowLogger(MLFlowLogger):
    """``MLFlowLogger`` whose metric/tag writes are queued, sent in the background and retried."""

    def __init__(
        self,
        *args: Any,
        retry_seconds: float = 5.0,
        flush_timeout: float = 30.0,
        skip_logged_steps: Mapping[str, int] | None = None,
        unsent_file: str | Path | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.retry_seconds = retry_seconds
        self.flush_timeout = flush_timeout
        self.skip_logged_steps = dict(skip_logged_steps or {})
        self.unsent_file = Path(unsent_file) if unsent_file else None
        self._metrics: list[Any] = []  # mlflow.entities.Metric, in logging order
        self._tags: dict[str, str] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closing = threading.Event()
        self._sending = False
        self._failing_since: float | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ queueing
    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric

        step = step or 0
        now = int(time.time() * 1000)
        queued = []
        for key, value in metrics.items():
            if isinstance(value, str):
                continue
            value = float(value.item() if hasattr(value, "item") else value)
            if step <= self.skip_logged_steps.get(key, -1):
                continue  # already in the store from before a resume
            queued.append(Metric(key=key, value=value, timestamp=now, step=step))
        if queued:
            with self._lock:
                self._metrics.extend(queued)
            self._start()

    @rank_zero_only
    def set_tag(self, key: str, value: str) -> None:
        """Queue a run tag (the newest value of a key wins)."""
        with self._lock:
            self._tags[key] = str(value)[:5000]
        self._start()

    @property
    def lead_run_id(self) -> str:
        """The run's id on rank 0, where the logger creates a new run on first use (Lightning's
        ``run_id`` is None only on the other ranks of a logger made without a run id)."""
        run_id = self.run_id
        if run_id is None:
            raise MertlabError("the MLflow logger has no run id: it is made on rank 0 or given one")
        return run_id

    @property
    def pending(self) -> int:
        """Metrics and tags queued but not yet in the store."""
        with self._lock:
            return len(self._metrics) + len(self._tags) + (1 if self._sending else 0)

    # ------------------------------------------------------------------ sending
    def _start(self) -> None:
        self._closing.clear()
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name="mertlab-mlflow-sender", daemon=True)
            self._thread.start()
        self._wake.set()

    def _run(self) -> None:
        while True:
            self._wake.wait(timeout=self.retry_seconds)
            self._wake.clear()
            while self._send_one_batch():
                pass
            if self._closing.is_set() and not self.pending:
                return

    def _send_one_batch(self) -> bool:
        """Send the oldest batch; True if something was sent and more may follow."""
        with self._lock:
            metrics = self._metrics[:MAX_METRICS_PER_BATCH]
            tag_keys = list(self._tags)[:MAX_TAGS_PER_BATCH]
            tags = {k: self._tags[k] for k in tag_keys}
            if not metrics and not tags:
                return False
            self._sending = True
        try:
            from mlflow.entities import RunTag

            with handled_store_errors():
                self._mlflow_client.log_batch(
                    cast(str, self.run_id),  # MLFlowLogger.run_id starts the run on first use
                    metrics=metrics,
                    tags=[RunTag(k, v) for k, v in tags.items()],
                )
        except Exception as exc:  # noqa: BLE001 - any store failure: keep the data, retry later
            with self._lock:
                self._sending = False
            if self._failing_since is None:
                self._failing_since = time.monotonic()
                log.warning(
                    "MLflow tracking store %s failed (%s: %s); training continues, metrics are kept and retried "
                    "every %gs",
                    self._tracking_uri,
                    type(exc).__name__,
                    str(exc).splitlines()[0][:200],
                    self.retry_seconds,
                )
            return False
        with self._lock:
            del self._metrics[: len(metrics)]
            for key in tag_keys:
                if self._tags.get(key) == tags[key]:
                    del self._tags[key]
            self._sending = False
        if self._failing_since is not None:
            log.warning(
                "MLflow tracking store %s is back after %.0fs; queued metrics sent",
                self._tracking_uri,
                time.monotonic() - self._failing_since,
            )
            self._failing_since = None
        return True

    def flush(self, timeout: float | None = None) -> bool:
        """Wait up to ``timeout`` (default ``flush_timeout``) seconds until the queue is sent."""
        if self._thread is None:
            return True
        deadline = time.monotonic() + (self.flush_timeout if timeout is None else timeout)
        self._wake.set()
        while self.pending and time.monotonic() < deadline:
            if not self._thread.is_alive():  # it ended (finalize) just before new data came
                self._start()
            time.sleep(0.05)  # the sender retries every retry_seconds by itself
        return not self.pending

    def write_unsent(self) -> Path | None:
        """Write what is still queued to ``unsent_file`` (JSON lines) and clear the queue."""
        with self._lock:
            metrics, tags = list(self._metrics), dict(self._tags)
            self._metrics.clear()
            self._tags.clear()
        if not metrics and not tags:
            return None
        if self.unsent_file is None:
            log.warning(
                "MLflow tracking store %s unreachable: %d metric values were not recorded",
                self._tracking_uri,
                len(metrics),
            )
            return None
        records = [
            {
                "key": m.key,
                "value": m.value if math.isfinite(m.value) else str(m.value),
                "step": m.step,
                "timestamp": m.timestamp,
            }
            for m in metrics
        ]
        self._append_unsent([*records, *({"tag": key, "value": value} for key, value in tags.items())])
        log.warning(
            "MLflow tracking store %s unreachable: %d metric values and %d tags written to %s",
            self._tracking_uri,
            len(metrics),
            len(tags),
            self.unsent_file,
        )
        return self.unsent_file

    def write_end(self, status: str, summary_step: int | None = None) -> Path | None:
        """Record in ``unsent_file`` that the run ended with ``status`` (and, with ``summary_step``,
        that its ``summary/*`` metrics are still to be logged at that step): the store did not
        take it. Nothing without ``unsent_file``."""
        if self.unsent_file is None:
            return None
        record: dict[str, Any] = {"status": status, "end_time": int(time.time() * 1000)}
        if summary_step is not None:
            record["summary_step"] = summary_step
        self._append_unsent([record])
        return self.unsent_file

    def _append_unsent(self, records: list[dict[str, Any]]) -> None:
        """Append ``records`` (each with this run's id and store) to ``unsent_file``, one JSON a line."""
        assert self.unsent_file is not None
        self.unsent_file.parent.mkdir(parents=True, exist_ok=True)
        with self.unsent_file.open("a") as f:
            for record in records:
                f.write(json.dumps({"run_id": self.run_id, **record, "tracking_uri": self._tracking_uri}) + "\n")

    @rank_zero_only
    def finalize(self, status: str = "success") -> None:
        """Send the queue (bounded wait), then mark the run terminated; never raises. A status
        the store does not take is written to ``unsent_file`` (:meth:`write_end`)."""
        if not self._initialized:
            return
        self.flush()
        if self.pending:
            self.write_unsent()
        self._closing.set()
        self._wake.set()
        try:
            with handled_store_errors():
                super().finalize(status)
        except Exception as exc:  # noqa: BLE001 - the run's status is bookkeeping, not training
            final = {"success": "FINISHED", "failed": "FAILED", "finished": "FINISHED"}.get(status, status)
            where = self.write_end(final)
            log.warning(
                "MLflow tracking store %s: could not mark run %s %s (%s: %s)%s",
                self._tracking_uri,
                self.run_id,
                final,
                type(exc).__name__,
                str(exc).splitlines()[0][:200] if str(exc) else "",
                f"; recorded in {where} for `mertlab tracking replay {where.parent}`" if where else "",
            )


def set_run_tag(trainer: Any, key: str, value: str) -> None:
    """Tag the MLflow run of ``trainer``'s loggers (queued and retried by :class:`ResilientMLFlowLogger`)."""
    for logger in trainer.loggers:
        if isinstance(logger, ResilientMLFlowLogger):
            logger.set_tag(key, value)
        elif isinstance(logger, MLFlowLogger):
            logger.experiment.set_tag(logger.run_id, key, value)
