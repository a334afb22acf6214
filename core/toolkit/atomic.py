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
    mode: int | None = None,
    before_replace: Callable[[], None] | None = None,
) -> Path:
    """Write ``path`` through ``write(file)`` into a unique temporary name in the same folder,
    flush it to disk (fsync), then rename it over ``path`` and fsync the folder.

    Readers see the previous file or the complete new one, never a partial file; a failure
    (an exception in ``write``, a full disk, a read-only folder) removes the temporary file and
    leaves ``path`` as it was. ``OSError`` propagates for the caller to name what was written.
    The file gets the permissions any new file of the process gets (``0o666`` less the umask:
    0644 by default, so shared caches and runs stay readable), or ``mode`` when given.
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
        os.chmod(tmp, 0o666 & ~process_umask() if mode is None else mode)  # mkstemp makes it private
        if before_replace is not None:
            before_replace()
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)
    return path


def process_umask() -> int:
    """The process's umask, read without changing it where the system says it (Linux
    ``/proc/self/status``); elsewhere set and restored at once."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


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
        _write_probe(folder)
    except OSError as exc:
        raise MertlabError(f"{what}: cannot write to {folder} ({exc.strerror or exc})") from None
    return folder


def check_creatable(folder: str | Path, what: str) -> None:
    """What :func:`check_writable` checks, creating nothing: ``folder``, or the nearest of its
    parents that exists when it does not, must be a folder a file can be written in (a probe
    file is written there and removed). Raises a :class:`~mertlab.errors.MertlabError` naming
    ``what`` and the folder."""
    from mertlab.errors import MertlabError

    folder = Path(folder).absolute()
    existing = next((p for p in (folder, *folder.parents) if p.exists()), None)
    if existing is None or not existing.is_dir():
        where = "" if existing is None else f": {existing} is not a folder"
        raise MertlabError(f"{what}: cannot create {folder}{where}")
    try:
        _write_probe(existing, sync=False)
    except OSError as exc:
        inside = "" if existing == folder else f" (it would be created inside {existing})"
        raise MertlabError(f"{what}: cannot write to {folder}{inside}: {exc.strerror or exc}") from None


def _write_probe(folder: Path, sync: bool = True) -> None:
    """Write (and ``sync``: fsync, where a full disk shows) and remove a small file in
    ``folder``; ``OSError`` when that fails."""
    fd, probe = tempfile.mkstemp(dir=folder, prefix=".mertlab-write-check.", suffix=".tmp")
    try:
        os.write(fd, b"ok")
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)
        os.unlink(probe)
