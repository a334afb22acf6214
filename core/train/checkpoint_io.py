"""Training checkpoints on disk: streamed atomic writes with a checksum sidecar, verified reads.

:class:`SafeCheckpointIO` is the Lightning ``CheckpointIO`` of every training run:

* **writes** stream ``torch.save`` straight into a temporary file in the checkpoint's own
  folder (no in-memory copy of the serialised checkpoint: host memory stays at the checkpoint's
  own tensors), hashing it on the way; the file is fsynced and renamed over the final name
  (:func:`mertlab.toolkit.atomic.atomic_write`), so a crash, a full disk or a read-only folder
  never leaves a truncated ``last.ckpt``: the previous checkpoint stays; such a failure is one
  :class:`~mertlab.errors.MertlabError` naming the file. Beside it goes a sidecar
  ``last.ckpt.json`` (size, SHA-256, step, spec, run; :mod:`mertlab.toolkit.checkpoint_sidecar`);
* **reads** (``--resume``, rollback) check the file against its sidecar, then use
  ``torch.load(weights_only=True)`` (:func:`mertlab.toolkit.safe_load.load_torch_file`): a
  damaged checkpoint or one that could run code is refused.

:func:`select_resume_checkpoint` picks what ``--resume`` continues: the newest checkpoint of a
spec's runs that is intact, reporting (and skipping) damaged or refused ones; candidates are
read memory-mapped (their tensors are not loaded). :func:`describe_checkpoint` gives a
checkpoint's step, run and SHA-256 without loading it (e.g. for ranks to agree on one).

A sharded (``fsdp``) checkpoint is a folder (one file per rank, written and read by torch
distributed checkpoint through Lightning's FSDP strategy, which does not go through this
class: it has no sidecar); what mertlab reads of it before the strategy loads it is its
``meta.pt`` (the non-tensor state: step, run id, spec), weights-only too.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, cast

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from mertlab.errors import MertlabError
from mertlab.experiment.spec import spec_fingerprint
from mertlab.toolkit.atomic import atomic_write
from mertlab.toolkit.checkpoint import load_checkpoint_file
from mertlab.toolkit.checkpoint_sidecar import (
    CheckpointRecord,
    HashingStream,
    file_sha256,
    read_sidecar,
    remove_sidecar,
    verify_checkpoint,
    write_sidecar,
)
from mertlab.toolkit.safe_load import load_torch_file

log = logging.getLogger(__name__)
_RUN_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def checkpoint_record(checkpoint: dict[str, Any], name: str, size: int, sha256: str) -> CheckpointRecord:
    """The sidecar record of a training checkpoint written as file ``name``."""
    spec = checkpoint.get("mertlab_spec")
    spec = spec if isinstance(spec, dict) else None
    step = checkpoint.get("global_step")
    run_id = checkpoint.get("mlflow_run_id")
    return CheckpointRecord(
        file=name,
        size=size,
        sha256=sha256,
        step=step if isinstance(step, int) else None,
        spec_name=spec.get("name") if spec else None,
        spec_fingerprint=spec_fingerprint(spec) if spec else None,
        mlflow_run_id=run_id if isinstance(run_id, str) else None,
    )


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
        """Stream ``checkpoint`` to ``path`` (atomically) and write its sidecar.

        Order: the new file is written and fsynced under a temporary name; the sidecar then
        lists it *and* the file it replaces; the rename follows; last the sidecar drops the old
        record. Whenever a crash hits, the sidecar describes the ``path`` present.
        """
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        path = Path(path)
        streams: list[HashingStream] = []

        def write(f: Any) -> None:
            stream = HashingStream(f)
            streams.append(stream)
            try:
                torch.save(checkpoint, cast(IO[bytes], stream))
            except Exception:
                if stream.error is not None:  # torch re-raises a failed write as a RuntimeError
                    raise stream.error from None
                raise

        def record() -> CheckpointRecord:
            return checkpoint_record(checkpoint, path.name, streams[-1].size, streams[-1].sha256)

        try:
            replaced = read_sidecar(path)
        except MertlabError:  # a damaged sidecar: it is rewritten below
            replaced = None
        try:
            atomic_write(
                path,
                write,
                before_replace=lambda: write_sidecar(path, record(), replaced.current if replaced else None),
            )
        except OSError as exc:
            raise MertlabError(
                f"{path}: cannot write checkpoint ({exc.strerror or exc}); the previous checkpoint there is kept"
            ) from None
        try:
            write_sidecar(path, record())
        except OSError as exc:  # the sidecar written before the rename still describes the new file
            log.warning("%s: could not drop the replaced file's record from its sidecar (%s)", path, exc)

    def remove_checkpoint(self, path: Any) -> None:
        """Delete a checkpoint (e.g. a best checkpoint that a better one replaced) and its sidecar."""
        super().remove_checkpoint(path)
        remove_sidecar(path)

    def load_checkpoint(
        self, path: Any, map_location: Callable | None = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        if self._preloaded is not None and self._preloaded[0] == Path(path).resolve():
            checkpoint, self._preloaded = self._preloaded[1], None
            return checkpoint
        return read_training_checkpoint(path)


#: The non-tensor state of a sharded checkpoint folder (Lightning's FSDP strategy writes it).
SHARDED_METADATA = "meta.pt"


def read_training_checkpoint(path: str | Path, mmap: bool = False) -> dict[str, Any]:
    """A Lightning training checkpoint, checked against its sidecar and read weights-only;
    one-line errors name ``path``. ``mmap``: the tensors are memory-mapped, not read.

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
        checkpoint = load_checkpoint_file(path, mmap=mmap)
        if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
            raise MertlabError(f"{path}: not a training checkpoint (no state_dict)")
    run_id = checkpoint.get("mlflow_run_id")
    if run_id is not None and not (isinstance(run_id, str) and _RUN_ID.match(run_id)):
        raise MertlabError(f"{path}: its mlflow_run_id {run_id!r} is not an MLflow run id")
    return checkpoint


def describe_checkpoint(path: str | Path) -> CheckpointRecord:
    """Step, run, spec and SHA-256 of a training checkpoint, without loading its tensors.

    A file with a sidecar: the sidecar's record, after checking the file against it (one
    :class:`MertlabError` when it does not match). A file without one (older): its hash
    computed and the rest read memory-mapped. A sharded folder: the hash covers every file in
    it (names and bytes, in name order), the rest comes from its ``meta.pt``.
    """
    path = Path(path)
    record = verify_checkpoint(path)
    if record is not None:
        return record
    checkpoint = read_training_checkpoint(path, mmap=True)
    if path.is_dir():
        digest = hashlib.sha256()
        files = sorted(p for p in path.rglob("*") if p.is_file())
        for file in files:
            digest.update(str(file.relative_to(path)).encode() + b"\0" + file_sha256(file).encode())
        return checkpoint_record(checkpoint, path.name, sum(f.stat().st_size for f in files), digest.hexdigest())
    return checkpoint_record(checkpoint, path.name, path.stat().st_size, file_sha256(path))


@dataclass
class ResumePoint:
    """The checkpoint ``--resume`` continues (read memory-mapped, checked against its
    sidecar: ``record`` is the sidecar's, None for an older checkpoint or a sharded folder)
    and the newer ones it skipped."""

    path: Path
    checkpoint: dict[str, Any]
    skipped: list[str] = field(default_factory=list)
    record: CheckpointRecord | None = None


def checkpoint_candidates(runs_dir: Path) -> list[Path]:
    """Every checkpoint under ``runs_dir/*/checkpoints/`` (files and sharded folders), newest first."""
    return sorted(
        runs_dir.glob("*/checkpoints/*.ckpt"), key=lambda p: (p.stat().st_mtime, p.name == "last.ckpt"), reverse=True
    )


def select_resume_checkpoint(runs_dir: Path, explicit: str | None = None) -> ResumePoint:
    """What ``--resume [CKPT]`` continues.

    ``explicit``: that file (or sharded folder), which must be intact. Otherwise every
    checkpoint under ``runs_dir/*/checkpoints/`` (``last.ckpt`` and the best ones), newest
    first: the first intact one is used -- it matches its sidecar and loads memory-mapped, so
    no candidate's tensors are read; each damaged or refused newer one is then logged as a
    warning and listed in :attr:`ResumePoint.skipped`. None intact is one error listing why.
    """
    if explicit is not None:
        path = Path(explicit)
        if not path.exists():
            raise MertlabError(f"--resume: no checkpoint file {path}")
        try:
            return ResumePoint(path, read_training_checkpoint(path, mmap=True), record=verify_checkpoint(path))
        except MertlabError as exc:
            raise MertlabError(f"--resume: {exc}") from None
    candidates = checkpoint_candidates(runs_dir)
    if not candidates:
        raise MertlabError(f"--resume: no checkpoint under {runs_dir}/*/checkpoints; train without --resume first")
    skipped: list[str] = []
    for path in candidates:
        try:
            checkpoint = read_training_checkpoint(path, mmap=True)
        except MertlabError as exc:
            skipped.append(str(exc))
            continue
        for problem in skipped:
            log.warning("--resume: skipping %s", problem)
        if skipped:
            log.warning("--resume: continuing from %s, the newest intact checkpoint", path)
        return ResumePoint(path, checkpoint, skipped, verify_checkpoint(path))
    raise MertlabError(f"--resume: no checkpoint under {runs_dir} loads: " + "; ".join(skipped))
