"""Crash-safe file writes: a complete new file or the old one, never a partial file."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def atomic_write(
    path: str | Path,
    write: Callable[[BinaryIO], None],
    mode: int = 0o644,
    before_replace: Callable[[], None] | None = None,
) -> Path:
    """Write ``path`` through ``write(file)`` into a unique temporary name in the same folder,
    flush it to disk (fsync), then rename it over ``path`` and fsync the folder.

    Readers see the previous file or the complete new one, never a partial file; a failure
    (an exception in ``write``, a full disk, a read-only folder) removes the temporary file and
    leaves ``path`` as it was. ``OSError`` propagates for the caller to name what was written.
    ``before_replace()`` runs once the new file is complete on disk, just before the rename
    (e.g. to record it elsewhere first); an exception there also keeps ``path`` as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)  # mkstemp makes it private; shared caches and runs must stay readable
        if before_replace is not None:
            before_replace()
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)
    return path


def _fsync_dir(folder: Path) -> None:
    """Persist a rename (the folder entry) on filesystems that need it; a no-op where folders
    cannot be opened (e.g. Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def check_writable(folder: str | Path, what: str) -> Path:
    """Create ``folder`` if needed and prove a file can be written in it (then removed).

    Raises :class:`~mertlab.errors.MertlabError` naming ``what`` (e.g. ``trainer.output_dir``)
    and the folder when it cannot be created or written (read-only, no permission, disk full).
    """
    from mertlab.errors import MertlabError

    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".mertlab-write-check.", suffix=".tmp")
        try:
            os.write(fd, b"ok")
            os.fsync(fd)
        finally:
            os.close(fd)
            os.unlink(probe)
    except OSError as exc:
        raise MertlabError(f"{what}: cannot write to {folder} ({exc.strerror or exc})") from None
    return folder
