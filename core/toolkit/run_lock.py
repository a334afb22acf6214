"""One writer per run: a lock file in the run's output folder, held by its training process.

``<trainer.output_dir>/<spec name>/<MLflow run id>/train.lock`` is held for as long as a
training process writes that run (its checkpoints, its MLflow run). The file says who holds it
(host, pid, process start, since when); the hold itself is an ``flock`` on the file, which the
operating system releases when the process ends however it ends (``kill -9`` included), so a
lock is never left behind by a crash. Locks of shared file systems that support them (NFS,
GPFS, Lustre mounted with ``flock``) hold across machines.

* :func:`acquire_run_lock`: a second process refuses to start, with one line naming the holder;
  a lock file left by a process that is gone is taken over (a warning names it). Where the file
  system has no locks, the holder named in the file decides: a process on this host that is
  gone is taken over, anything else refuses (remove the file when that process is known gone).
* :func:`lock_held`: whether some process holds a run's lock now (the "left RUNNING" checks).

Within one process the lock is re-entrant (a sweep child holds it while its training holds it
again). Under DDP/FSDP only rank 0 holds it.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path

from mertlab.errors import MertlabError

log = logging.getLogger(__name__)

LOCK_FILE = "train.lock"
#: errno values of ``flock`` on a file system without locks
_NO_LOCKS = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}


# --------------------------------------------------------------------------- processes
def _start_ticks(pid: int) -> str | None:
    """The start time of process ``pid`` (Linux ``/proc``; None elsewhere or if it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def process_identity(pid: int | None = None) -> str:
    """``host:pid:start`` of a process of this host (this one by default): the start time tells
    a reused pid apart."""
    pid = os.getpid() if pid is None else pid
    return f"{platform.node()}:{pid}:{_start_ticks(pid) or ''}"


def process_alive(identity: str) -> bool:
    """Whether the process of a :func:`process_identity` may still run (other hosts: assumed alive)."""
    host, _, rest = identity.partition(":")
    pid_text, _, start = rest.partition(":")
    if host != platform.node() or not pid_text.isdigit():
        return True
    pid = int(pid_text)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not start or _start_ticks(pid) == start


# --------------------------------------------------------------------------- the lock
@dataclass(frozen=True)
class LockHolder:
    """Who holds (or last held) a run lock, as written in the lock file."""

    identity: str  # process_identity()
    since: str  # local time the lock was taken

    def describe(self) -> str:
        host, _, rest = self.identity.partition(":")
        return f"pid {rest.partition(':')[0] or '?'} on {host} (since {self.since})"


def read_holder(path: Path) -> LockHolder | None:
    """The holder named in lock file ``path``; None when there is none (released, empty, unreadable)."""
    try:
        data = json.loads(path.read_text() or "null")
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("identity"), str):
        return None
    return LockHolder(data["identity"], str(data.get("since", "?")))


@dataclass
class RunLock:
    """A held run lock; :meth:`release` it (or use it as a context manager)."""

    path: Path
    fd: int
    count: int = 1

    def release(self) -> None:
        """Give the lock up (the last release of a re-entrant hold): the file is emptied, then unlocked."""
        self.count -= 1
        if self.count > 0:
            return
        _HELD.pop(self.path, None)
        try:
            os.ftruncate(self.fd, 0)
        except OSError:
            pass
        try:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
        except OSError:
            pass
        os.close(self.fd)

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


_HELD: dict[Path, RunLock] = {}


def lock_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / LOCK_FILE


def _refusal(path: Path, holder: LockHolder | None) -> MertlabError:
    who = holder.describe() if holder else "another process"
    return MertlabError(
        f"{path}: this run is being trained by {who}; a second process would write the same checkpoints and "
        "MLflow run -- wait for it to end or stop it"
    )


def acquire_run_lock(run_dir: str | Path) -> RunLock:
    """Hold the lock of the run whose output folder is ``run_dir`` (created if needed).

    Raises :class:`~mertlab.errors.MertlabError` (one line naming the holder) when another live
    process holds it; takes over a lock whose holder is gone (see the module docstring).
    """
    try:
        Path(run_dir).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MertlabError(f"{run_dir}: cannot create the run's folder ({exc.strerror or exc})") from None
    path = lock_path(run_dir).resolve()
    held = _HELD.get(path)
    if held is not None:
        held.count += 1
        return held
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise MertlabError(f"{path}: cannot create the run's lock file ({exc.strerror or exc})") from None
    me = process_identity()
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise _refusal(path, read_holder(path)) from None
    except OSError as exc:
        if exc.errno not in _NO_LOCKS:
            os.close(fd)
            raise MertlabError(f"{path}: cannot lock the run ({exc.strerror or exc})") from None
        holder = read_holder(path)  # no locks on this file system: the file's word decides
        if holder is not None and holder.identity != me and process_alive(holder.identity):
            os.close(fd)
            raise _refusal(path, holder) from None
    previous = read_holder(path)
    if previous is not None and previous.identity != me:
        log.warning("%s: taking over the lock of %s, a process that is gone", path, previous.describe())
    record = json.dumps({"identity": me, "since": time.strftime("%Y-%m-%d %H:%M:%S")}).encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, record, 0)
    os.fsync(fd)
    lock = RunLock(path, fd)
    _HELD[path] = lock
    return lock


def lock_held(path: str | Path) -> bool:
    """Whether a process (this one included) holds the lock file ``path`` now. A missing file, or
    a file system without locks, counts as not held."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)  # closing the descriptor drops the probe's own shared lock
    return False
