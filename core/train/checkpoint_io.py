"""Training checkpoints on disk: atomic, verified writes and weights-only reads.

:class:`SafeCheckpointIO` is the Lightning ``CheckpointIO`` of every training run:

* **writes** go to a temporary file in the checkpoint's own folder, are fsynced and renamed
  over the final name (:func:`mertlab.toolkit.atomic.atomic_write`), so a crash, a full disk or a
  read-only folder never leaves a truncated ``last.ckpt``: the previous checkpoint stays;
  such a failure is one :class:`~mertlab.errors.MertlabError` naming the file;
* **reads** (``--resume``) use ``torch.load(weights_only=True)``
  (:func:`mertlab.toolkit.safe_load.load_torch_file`): a checkpoint that could run code is refused.

:func:`select_resume_checkpoint` picks what ``--resume`` continues: the newest checkpoint of a
spec's runs that loads, reporting (and skipping) damaged or refused ones.

A sharded (``fsdp``) checkpoint is a folder (one file per rank, written and read by torch
distributed checkpoint through Lightning's FSDP strategy); what mertlab reads of it before the
strategy loads it is its ``meta.pt`` (the non-tensor state: step, run id, spec), weights-only too.
"""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from mertlab.errors import MertlabError
from mertlab.toolkit.atomic import atomic_write
from mertlab.toolkit.safe_load import load_torch_file

log = logging.getLogger(__name__)
_RUN_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class SafeCheckpointIO(TorchCheckpointIO):
    """Atomic, fsynced checkpoint writes and weights-only reads (see the module docstring)."""

    def __init__(self) -> None:
        super().__init__()
        self._preloaded: tuple[Path, dict[str, Any]] | None = None

    def preload(self, path: str | Path, checkpoint: dict[str, Any]) -> None:
        """Hand over ``checkpoint``, already read (and verified) from ``path``, so that
        Lightning's restore does not read the file a second time."""
        self._preloaded = (Path(path).resolve(), checkpoint)

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        path = Path(path)
        buffer = io.BytesIO()  # serialised first: a full disk then fails in a plain write, as an OSError
        torch.save(checkpoint, buffer)
        try:
            atomic_write(path, lambda f: f.write(buffer.getbuffer()))
        except OSError as exc:
            raise MertlabError(
                f"{path}: cannot write checkpoint ({exc.strerror or exc}); the previous checkpoint there is kept"
            ) from None

    def load_checkpoint(
        self, path: Any, map_location: Callable | None = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        if self._preloaded is not None and self._preloaded[0] == Path(path).resolve():
            checkpoint, self._preloaded = self._preloaded[1], None
            return checkpoint
        return read_training_checkpoint(path)


#: The non-tensor state of a sharded checkpoint folder (Lightning's FSDP strategy writes it).
SHARDED_METADATA = "meta.pt"


def read_training_checkpoint(path: str | Path) -> dict[str, Any]:
    """A Lightning training checkpoint, read weights-only; one-line errors name ``path``.

    For a sharded checkpoint folder: its metadata only (no ``state_dict``; the strategy reads
    the shards when it restores).
    """
    path = Path(path)
    if path.is_dir():
        meta = path / SHARDED_METADATA
        if not meta.is_file():
            raise MertlabError(f"{path}: a folder, but not a sharded training checkpoint (no {SHARDED_METADATA})")
        checkpoint = load_torch_file(meta, "checkpoint")
        if not isinstance(checkpoint, dict):
            raise MertlabError(f"{meta}: not the metadata of a sharded training checkpoint")
    else:
        checkpoint = load_torch_file(path, "checkpoint")
        if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
            raise MertlabError(f"{path}: not a training checkpoint (no state_dict)")
    run_id = checkpoint.get("mlflow_run_id")
    if run_id is not None and not (isinstance(run_id, str) and _RUN_ID.match(run_id)):
        raise MertlabError(f"{path}: its mlflow_run_id {run_id!r} is not an MLflow run id")
    return checkpoint


@dataclass
class ResumePoint:
    """The checkpoint ``--resume`` continues, already read, and the newer ones it skipped."""

    path: Path
    checkpoint: dict[str, Any]
    skipped: list[str] = field(default_factory=list)


def checkpoint_candidates(runs_dir: Path) -> list[Path]:
    """Every checkpoint under ``runs_dir/*/checkpoints/`` (files and sharded folders), newest first."""
    return sorted(
        runs_dir.glob("*/checkpoints/*.ckpt"), key=lambda p: (p.stat().st_mtime, p.name == "last.ckpt"), reverse=True
    )


def select_resume_checkpoint(runs_dir: Path, explicit: str | None = None) -> ResumePoint:
    """What ``--resume [CKPT]`` continues.

    ``explicit``: that file (or sharded folder), which must load. Otherwise every checkpoint
    under ``runs_dir/*/checkpoints/`` (``last.ckpt`` and the best ones), newest first: the first
    that loads is used; each damaged or refused newer one is then logged as a warning and listed in
    :attr:`ResumePoint.skipped`. None loading is one error listing why.
    """
    if explicit is not None:
        path = Path(explicit)
        if not path.exists():
            raise MertlabError(f"--resume: no checkpoint file {path}")
        try:
            return ResumePoint(path, read_training_checkpoint(path))
        except MertlabError as exc:
            raise MertlabError(f"--resume: {exc}") from None
    candidates = checkpoint_candidates(runs_dir)
    if not candidates:
        raise MertlabError(f"--resume: no checkpoint under {runs_dir}/*/checkpoints; train without --resume first")
    skipped: list[str] = []
    for path in candidates:
        try:
            checkpoint = read_training_checkpoint(path)
        except MertlabError as exc:
            skipped.append(str(exc))
            continue
        for problem in skipped:
            log.warning("--resume: skipping %s", problem)
        if skipped:
            log.warning("--resume: continuing from %s, the newest checkpoint that loads", path)
        return ResumePoint(path, checkpoint, skipped)
    raise MertlabError(f"--resume: no checkpoint under {runs_dir} loads: " + "; ".join(skipped))
