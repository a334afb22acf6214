"""Rolling a running fit back to its newest checkpoint (the stability callback's ``rollback``).

Under DDP the rollback is collective: rank 0 names the checkpoint, every rank loads that file
(checked against its checksum sidecar) and the ranks compare a digest of what they read
(:func:`~mertlab.train.agreement.state_digest`); only when every rank read the same state do
all of them load it. Otherwise -- a rank cannot read the file (node-local storage, a damaged
or failed read) or read other bytes -- every rank only skips the step's update, so the ranks'
weights never diverge.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch

from mertlab.errors import MertlabError
from mertlab.toolkit.checkpoint import load_checkpoint_file
from mertlab.train.agreement import all_ranks, state_digest


@dataclass(frozen=True)
class RollbackOutcome:
    rolled_back: bool
    message: str  # what happened, for the run tag and the log


def newest_checkpoint(trainer: L.Trainer) -> Path | None:
    """The newest ``last.ckpt`` a checkpoint callback of ``trainer`` has written, if any."""
    paths = [Path(last) for cb in trainer.checkpoint_callbacks if (last := getattr(cb, "last_model_path", ""))]
    paths = [p for p in paths if p.is_file()]
    return max(paths, key=lambda p: p.stat().st_mtime) if paths else None


def _read(path: Path) -> tuple[dict[str, Any] | None, str | None, str | None]:
    """``(checkpoint, digest of what a rollback loads, None)`` or ``(None, None, why not)``."""
    try:
        ckpt = load_checkpoint_file(path)  # checked against its sidecar first
        state = {"state_dict": ckpt["state_dict"], "optimizer": ckpt["optimizer_states"][0]}
        return ckpt, state_digest(state), None
    except MertlabError as exc:  # damaged, or not a checkpoint: the reason names the file
        return None, None, str(exc)
    except Exception as exc:  # noqa: BLE001 - an unreadable checkpoint must not end the run
        return None, None, type(exc).__name__


def rollback_to_last_checkpoint(
    trainer: L.Trainer, module: Any, optimizer: torch.optim.Optimizer, lr_scale: float
) -> RollbackOutcome:
    """Drop this step's update, reload weights and optimizer state from the newest checkpoint and
    multiply the learning rate (the schedule's peak, so it stays scaled) by ``lr_scale``.

    Every rank calls it at the same step (see the module docstring). The step counter, data
    order and schedule position go on from here (the data that led to the spike is not
    replayed). Without a checkpoint that every rank reads alike, the step is only skipped.
    """
    module.skip_update(optimizer)
    path = newest_checkpoint(trainer)
    if trainer.world_size > 1:  # rank 0's choice: the ranks' own views of the folder may differ
        path = trainer.strategy.broadcast(path, src=0)
    if path is None:
        return RollbackOutcome(False, "no checkpoint yet to roll back to: update skipped")
    ckpt, digest, problem = _read(path)
    reports = all_ranks((problem, digest))
    failed = [(rank, why) for rank, (why, _) in enumerate(reports) if why is not None]
    if failed:
        rank, why = failed[0]
        where = f" on rank {rank}" if len(reports) > 1 else ""
        return RollbackOutcome(False, f"cannot roll back to {path.name}{where} ({why}): update skipped")
    if len({d for _, d in reports}) > 1:
        return RollbackOutcome(
            False, f"cannot roll back to {path.name}: the ranks read different contents: update skipped"
        )
    assert ckpt is not None  # every rank read it (no problem reported)
    module.load_state_dict(ckpt["state_dict"])
    optimizer.load_state_dict(ckpt["optimizer_states"][0])
    for config in trainer.lr_scheduler_configs:
        scheduler = config.scheduler
        scheduler.base_lrs = [lr * lr_scale for lr in scheduler.base_lrs]
    for group in optimizer.param_groups:
        group["lr"] *= lr_scale
    step = ckpt.get("global_step", "?")
    return RollbackOutcome(True, f"rolled back to {path.name} (step {step}), learning rate x{lr_scale:g}")
