"""``mertlab train --profile [N]``: a torch.profiler trace of N training steps, as MLflow artifacts.

The profiler starts after ``warmup`` steps (first-step costs -- allocator growth, lazy inits,
autotuning -- are not what a long run spends its time on), records ``steps`` steps and logs to
the run, under ``profile/``:

* ``trace.json``    -- the Chrome trace (open in https://ui.perfetto.dev or chrome://tracing);
* ``top_ops.txt``   -- the top operators by self time (CPU, and the accelerator when there is one),
  the table ``bench/README.md`` uses to explain a missed speed target.

A run shorter than ``warmup + steps`` logs what it recorded (with a note in ``top_ops.txt``).
Only rank 0 profiles.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any, cast

import lightning as L
import torch

log = logging.getLogger(__name__)

ARTIFACT_DIR = "profile"
DEFAULT_STEPS = 5
WARMUP_STEPS = 2


class ProfileSteps(L.Callback):
    """Profile ``steps`` training steps after ``warmup`` and log the trace and a top-ops table."""

    def __init__(self, steps: int = DEFAULT_STEPS, warmup: int = WARMUP_STEPS, row_limit: int = 30) -> None:
        if steps < 1:
            raise ValueError(f"--profile: the number of steps must be >= 1, got {steps}")
        self.steps, self.warmup, self.row_limit = steps, warmup, row_limit
        self.profiler: torch.profiler.profile | None = None
        self.recorded = 0
        self.done = False

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self.done or self.profiler is not None or not trainer.is_global_zero:
            return
        if trainer.global_step >= self.warmup:
            activities = [torch.profiler.ProfilerActivity.CPU]
            if torch.cuda.is_available():
                activities.append(torch.profiler.ProfilerActivity.CUDA)
            self.profiler = torch.profiler.profile(activities=activities, record_shapes=True)
            self.profiler.__enter__()

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self.profiler is None:
            return
        self.recorded += 1
        if self.recorded >= self.steps:
            self._finish(trainer, note=None)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.profiler is not None:
            self._finish(trainer, note=f"training ended after {self.recorded} of the {self.steps} profiled steps")
        elif not self.done and trainer.is_global_zero:
            log.warning(
                "--profile: training ended before step %d, where profiling starts; nothing recorded", self.warmup
            )

    def _finish(self, trainer: L.Trainer, note: str | None) -> None:
        profiler, self.profiler, self.done = self.profiler, None, True
        assert profiler is not None  # called only while recording
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        profiler.__exit__(None, None, None)
        sort_by = "self_cuda_time_total" if torch.cuda.is_available() else "self_cpu_time_total"
        header = (
            f"torch.profiler: {self.recorded} training step(s) from step {trainer.global_step - self.recorded}, "
            f"sorted by {sort_by}" + (f"; {note}" if note else "")
        )
        table = profiler.key_averages().table(sort_by=sort_by, row_limit=self.row_limit)
        logger = trainer.logger
        with tempfile.TemporaryDirectory() as tmp:
            trace, top = Path(tmp) / "trace.json", Path(tmp) / "top_ops.txt"
            profiler.export_chrome_trace(str(trace))
            top.write_text(f"{header}\n\n{table}\n")
            run_id = getattr(logger, "run_id", None)
            if run_id is None:
                log.warning("--profile: no MLflow run to log to; top ops:\n%s", table)
                return
            client = cast(Any, logger).experiment  # the MLflow logger's client (it has a run id)
            for path in (trace, top):
                client.log_artifact(run_id, str(path), ARTIFACT_DIR)
        log.info("--profile: logged %s/trace.json and %s/top_ops.txt to run %s", ARTIFACT_DIR, ARTIFACT_DIR, run_id)
