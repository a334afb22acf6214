"""Size/SHA-256 records of cache files: any changed, missing or added byte is detected on read.

A file ``<name>.<ext>`` written with :func:`write_with_record` gets a record ``<name>.sum.json``
beside it (``{"bytes": N, "sha256": "..."}``), written first, both atomically
(:func:`~mertlab.toolkit.atomic.atomic_write`). :func:`record_problem` compares the file with its
record. The target cache (``.npy`` entries) and the probe feature cache (``.npz`` entries) use it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from mertlab.toolkit.atomic import atomic_write
from mertlab.toolkit.checkpoint_sidecar import file_sha256


def record_path(path: str | Path) -> Path:
    """The size/checksum record of ``path``: ``<stem>.sum.json`` beside it."""
    path = Path(path)
    return path.with_name(path.stem + ".sum.json")


def write_with_record(path: str | Path, blob: bytes) -> Path:
    """Write ``blob`` as ``path`` with its record beside it (the record first: a crash between
    the two leaves a record that does not match, so the file reads as damaged, never as good).
    ``OSError`` propagates for the caller to name what was written."""
    record = json.dumps({"bytes": len(blob), "sha256": hashlib.sha256(blob).hexdigest()}).encode()
    atomic_write(record_path(path), lambda f: f.write(record))
    return atomic_write(path, lambda f: f.write(blob))


def read_record(path: str | Path) -> dict[str, Any] | None:
    """The record of ``path``; None when there is none (a file written before records existed),
    ``{}`` when it is damaged (then nothing about the file can be trusted)."""
    try:
        record = json.loads(record_path(path).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def record_problem(path: str | Path, require: bool = False) -> str | None:
    """What is wrong with ``path`` against its record (size, then checksum), or None when it
    matches. A file without a record passes unless ``require``."""
    path = Path(path)
    record = read_record(path)
    if record is None:
        return "no size/checksum record beside it" if require else None
    try:
        size = path.stat().st_size
    except OSError as exc:
        return f"cannot read it ({exc.strerror or exc})"
    if record.get("bytes") != size:
        return f"{size} bytes, its record says {record.get('bytes')}"
    try:
        digest = file_sha256(path)
    except OSError as exc:
        return f"cannot read it ({exc.strerror or exc})"
    if record.get("sha256") != digest:
        return "checksum mismatch (contents changed since it was written)"
    return None
