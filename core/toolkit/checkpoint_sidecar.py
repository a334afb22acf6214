"""Checkpoint integrity: a small JSON sidecar beside each checkpoint, checked at every load.

``last.ckpt`` gets ``last.ckpt.json``::

    {"format": "mertlab-checkpoint-sidecar/1", "file": "last.ckpt", "size": 1234, "sha256": "...",
     "step": 500, "spec_name": "mert_tiny", "spec_fingerprint": "...", "mlflow_run_id": "...",
     "previous": null}

* **Written with the checkpoint** (:class:`mertlab.train.checkpoint_io.SafeCheckpointIO`): the
  SHA-256 is computed while the checkpoint streams to disk (:class:`HashingStream`, no second
  read). Before the new file replaces the old one, the sidecar lists both (``previous``); after,
  only the new one. A crash at any moment leaves a sidecar that describes the file present.
* **Checked at every load** (:func:`verify_checkpoint`: ``--resume``, rollback, ``probe``,
  ``export``, backbone loading): size first, then the hash; a file that matches neither record
  is one :class:`~mertlab.errors.MertlabError` naming it. A checkpoint without a sidecar (written
  before sidecars existed) loads with one warning.
* **Read without loading** (:func:`read_sidecar`): step, run and spec of a checkpoint in
  microseconds, e.g. to choose what to resume before reading any weights.

A verified file is remembered by ``(device, inode, size, mtime)``, so loading it twice in one
process (selection, then restore) hashes it once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, BinaryIO

from mertlab.errors import MertlabError
from mertlab.toolkit.atomic import atomic_write

log = logging.getLogger(__name__)
SIDECAR_FORMAT = "mertlab-checkpoint-sidecar/1"
SIDECAR_SUFFIX = ".json"
_BLOCK = 1 << 20


@dataclass(frozen=True)
class CheckpointRecord:
    """What a sidecar records about one version of a checkpoint file."""

    file: str  # the checkpoint's file name (the sidecar lies beside it)
    size: int  # bytes
    sha256: str  # hex digest of the whole file
    step: int | None = None  # global step (training checkpoints)
    spec_name: str | None = None
    spec_fingerprint: str | None = None  # of what the run trains (mertlab.experiment.spec.spec_fingerprint)
    mlflow_run_id: str | None = None

    @classmethod
    def from_dict(cls, data: Any) -> CheckpointRecord:
        """A record from its JSON form; ``ValueError`` when it is not one."""
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        known = {f.name for f in fields(cls)}
        record = cls(**{k: v for k, v in data.items() if k in known})
        if not (isinstance(record.size, int) and isinstance(record.sha256, str) and len(record.sha256) == 64):
            raise ValueError("no size and SHA-256")
        return record


@dataclass(frozen=True)
class Sidecar:
    """A sidecar file: the current record and, while a save is replacing the file, the previous one."""

    path: Path
    current: CheckpointRecord
    previous: CheckpointRecord | None = None


def sidecar_path(checkpoint: str | Path) -> Path:
    """``<checkpoint>.json`` beside the checkpoint."""
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(checkpoint.name + SIDECAR_SUFFIX)


class HashingStream:
    """A write-only binary stream over ``file`` that hashes (SHA-256) and counts what passes
    through, for ``torch.save(obj, HashingStream(f))``: the checkpoint streams straight to disk,
    with no in-memory copy. ``error``: the ``OSError`` a write raised (torch re-raises it as a
    ``RuntimeError``; the caller re-raises this one)."""

    def __init__(self, file: BinaryIO) -> None:
        self.file = file
        self.digest = hashlib.sha256()
        self.size = 0
        self.error: OSError | None = None

    def write(self, data: Any) -> int:
        try:
            written = self.file.write(data)
        except OSError as exc:
            self.error = exc
            raise
        self.digest.update(data)
        self.size += memoryview(data).nbytes
        return written

    def flush(self) -> None:
        self.file.flush()

    @property
    def sha256(self) -> str:
        return self.digest.hexdigest()


def file_sha256(path: str | Path) -> str:
    """SHA-256 (hex) of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def write_sidecar(checkpoint: str | Path, current: CheckpointRecord, previous: CheckpointRecord | None = None) -> Path:
    """Write the sidecar of ``checkpoint`` atomically; ``OSError`` propagates."""
    data = {"format": SIDECAR_FORMAT, **asdict(current), "previous": asdict(previous) if previous else None}
    text = (json.dumps(data, indent=1) + "\n").encode()
    return atomic_write(sidecar_path(checkpoint), lambda f: f.write(text))


def read_sidecar(checkpoint: str | Path) -> Sidecar | None:
    """The sidecar of ``checkpoint`` (None when it has none); a damaged one is one
    :class:`MertlabError` naming it. Reads only the small JSON file."""
    path = sidecar_path(checkpoint)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MertlabError(_damaged_sidecar(path, checkpoint, exc)) from None
    try:
        if not isinstance(data, dict) or data.get("format") != SIDECAR_FORMAT:
            raise ValueError(f"not a {SIDECAR_FORMAT} file")
        previous = data.get("previous")
        return Sidecar(
            path, CheckpointRecord.from_dict(data), CheckpointRecord.from_dict(previous) if previous else None
        )
    except (TypeError, ValueError) as exc:
        raise MertlabError(_damaged_sidecar(path, checkpoint, exc)) from None


def _damaged_sidecar(path: Path, checkpoint: str | Path, exc: BaseException) -> str:
    return (
        f"{path}: damaged checkpoint sidecar ({exc}); {Path(checkpoint).name} cannot be checked "
        "(delete the sidecar to load it unchecked)"
    )


_verified: dict[tuple[int, int, int, int], CheckpointRecord] = {}
_warned: set[str] = set()


def verify_checkpoint(path: str | Path) -> CheckpointRecord | None:
    """Check ``path`` against its sidecar: the record it matches, or None when it has no
    sidecar (an older checkpoint; see :func:`warn_unverified`). A file whose size or SHA-256
    matches no record of its sidecar, or a damaged sidecar, is one :class:`MertlabError`
    naming the file. A folder (a sharded checkpoint) has no sidecar: None."""
    path = Path(path)
    if path.is_dir():
        return None
    sidecar = read_sidecar(path)
    if sidecar is None:
        return None
    try:
        stat = path.stat()
    except OSError as exc:
        raise MertlabError(f"{path}: cannot read checkpoint ({exc.strerror or exc})") from None
    key = (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns)
    known = _verified.get(key)
    records = [r for r in (sidecar.current, sidecar.previous) if r is not None]
    if known is not None and known in records:
        return known
    sized = [r for r in records if r.size == stat.st_size]
    if not sized:
        raise MertlabError(
            f"{path}: damaged or truncated checkpoint ({stat.st_size} bytes; its sidecar {sidecar.path.name} "
            f"records {sidecar.current.size})"
        )
    try:
        actual = file_sha256(path)
    except OSError as exc:
        raise MertlabError(f"{path}: cannot read checkpoint ({exc.strerror or exc})") from None
    match = next((r for r in sized if r.sha256 == actual), None)
    if match is None:
        raise MertlabError(
            f"{path}: damaged checkpoint (its SHA-256 {actual[:16]}... differs from {sidecar.current.sha256[:16]}... "
            f"recorded in its sidecar {sidecar.path.name} when it was written)"
        )
    if len(_verified) > 64:
        _verified.clear()
    _verified[key] = match
    return match


def warn_unverified(path: str | Path) -> None:
    """One warning per file and process: a checkpoint loaded without a sidecar to check it."""
    name = str(path)
    if name not in _warned:
        _warned.add(name)
        log.warning(
            "%s has no sidecar %s (written before checkpoints had one): loaded without an integrity check",
            name,
            sidecar_path(path).name,
        )


def remove_sidecar(checkpoint: str | Path) -> None:
    """Delete the sidecar of a deleted checkpoint (nothing when it has none)."""
    try:
        os.unlink(sidecar_path(checkpoint))
    except FileNotFoundError:
        pass
