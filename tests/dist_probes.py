"""Test-only training callbacks for multi-process runs (registered through the real
``register_callbacks`` hook from a test distribution's entry point), steered by environment
variables so that a crashed and a resumed run can share one spec:

* ``rank_probe`` writes, per rank, JSON lines to ``$PROBE_DIR/rank<r>.jsonl``: the run and step
  it starts from, the files and crop starts of its first training batch, and after every step
  a digest of its trainable weights and optimizer state, and its learning rate;
* ``test_faults`` forces a loss spike at the steps in ``$SPIKE_STEPS`` (before the stability
  callback scores it), makes rank 1's checkpoint reads fail at the steps in
  ``$BREAK_LOAD_STEPS``, and ends every rank abruptly (``os._exit``) at ``$CRASH_AT_STEP``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import lightning as L

from mertlab.contracts import Params
from mertlab.hookspecs import hookimpl


def _steps(name: str) -> set[int]:
    return {int(s) for s in os.environ.get(name, "").split(",") if s.strip()}


class RankProbe(L.Callback):
    name = "rank_probe"
    summary = "test: what each rank starts from, reads and holds"
    Params = Params

    def __init__(self, params: Params) -> None:
        self.first_batch = True

    def _write(self, trainer: L.Trainer, record: dict[str, Any]) -> None:
        folder = Path(os.environ["PROBE_DIR"])
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / f"rank{trainer.global_rank}.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")

    def on_train_start(self, trainer: L.Trainer, pl_module: Any) -> None:
        run_id = getattr(trainer.logger, "_run_id", None)
        self._write(trainer, {"event": "start", "run_id": run_id, "step": trainer.global_step})

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if self.first_batch:
            self.first_batch = False
            files = [Path(f.path).name for f in batch.files]
            starts = [round(float(s), 6) for s in batch.start_seconds]
            self._write(trainer, {"event": "batch", "step": trainer.global_step, "files": files, "starts": starts})

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        from mertlab.train.agreement import state_digest

        optimizer = trainer.optimizers[0]
        weights = {n: p for n, p in pl_module.named_parameters() if p.requires_grad}
        self._write(
            trainer,
            {
                "event": "step",
                "step": trainer.global_step,
                "weights": state_digest(weights),
                "optimizer": state_digest(optimizer.state_dict()["state"]),
                "lr": optimizer.param_groups[0]["lr"],
            },
        )


class FaultInjector(L.Callback):
    name = "test_faults"
    summary = "test: forced loss spikes, failing checkpoint reads on rank 1, a crash"
    Params = Params

    def __init__(self, params: Params) -> None:
        self._restore: Any = None

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if trainer.global_step in _steps("CRASH_AT_STEP"):
            os._exit(3)  # as a killed job: no clean-up, the MLflow run stays RUNNING

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: Any, optimizer: Any) -> None:
        step = trainer.global_step
        if step in _steps("SPIKE_STEPS") and pl_module.last_loss is not None:
            pl_module.last_loss = 1e9
        if step in _steps("BREAK_LOAD_STEPS") and trainer.global_rank == 1:
            import mertlab.train.rollback as rollback

            def unreadable(path: Any, *args: Any, **kwargs: Any) -> Any:
                raise OSError(f"{path}: not on this node")

            self._restore = rollback.load_checkpoint_file
            rollback.load_checkpoint_file = unreadable

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self._restore is not None:
            import mertlab.train.rollback as rollback

            rollback.load_checkpoint_file, self._restore = self._restore, None


@hookimpl
def register_callbacks(register):
    register(RankProbe)
    register(FaultInjector)
