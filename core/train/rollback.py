"""Rolling a running fit back to its newest checkpoint (the stability callback's ``rollback``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch

from mertlab.errors import MertlabError
from mertlab.toolkit.checkpoint import load_checkpoint_file


@dataclass(frozen=True)
class RollbackOutcome:
    rolled_back: bool
    message: str  # what happened, for the run tag and the log


def newest_checkpoint(trainer: L.Trainer) -> Path | None:
    """The newest ``last.ckpt`` a checkpoint callback of ``trainer`` has written, if any."""
    paths = [Path(cb.last_model_path) for cb in trainer.checkpoint_callbacks if getattr(cb, "last_model_path", "")]
    paths = [p for p in paths if p.is_file()]
    return max(paths, key=lambda p: p.stat().st_mtime) if paths else None


def rollback_to_last_checkpoint(
    trainer: L.Trainer, module: Any, optimizer: torch.optim.Optimizer, lr_scale: float
) -> RollbackOutcome:
    """Drop this step's update, reload weights and optimizer state from the newest checkpoint and
    multiply the learning rate (the schedule's peak, so it stays scaled) by ``lr_scale``.

    The step counter, data order and schedule position go on from here (the data that led to
    the spike is not replayed). Without a readable checkpoint the step is only skipped.
    """
    module.skip_update(optimizer)
    path = newest_checkpoint(trainer)
    if path is None:
        return RollbackOutcome(False, "no checkpoint yet to roll back to: update skipped")
    try:
        ckpt = load_checkpoint_file(path)  # checked against its sidecar first
        module.load_state_dict(ckpt["state_dict"])
        optimizer.load_state_dict(ckpt["optimizer_states"][0])
    except MertlabError as exc:  # damaged, or not a checkpoint: the reason names the file
        return RollbackOutcome(False, f"cannot roll back ({exc}): update skipped")
    except Exception as exc:  # noqa: BLE001 - an unreadable checkpoint must not end the run
        return RollbackOutcome(False, f"cannot roll back to {path.name} ({type(exc).__name__}): update skipped")
    for config in trainer.lr_scheduler_configs:
        scheduler = config.scheduler
        scheduler.base_lrs = [lr * lr_scale for lr in scheduler.base_lrs]
    for group in optimizer.param_groups:
        group["lr"] *= lr_scale
    step = ckpt.get("global_step", "?")
    return RollbackOutcome(True, f"rolled back to {path.name} (step {step}), learning rate x{lr_scale:g}")
