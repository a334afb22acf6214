"""Bad audio files a run skips instead of stopping: each named once, with the reason.

Files are checked when the data set is scanned (unreadable, empty or header-only, too short)
and again whenever a crop is decoded (decoding errors, non-finite samples), in DataLoader
workers too: a bad item travels to the main process inside its batch (``AudioBatch.skipped``)
and is recorded here.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SkippedFile:
    """An audio file left out of training, and why."""

    path: Path
    reason: str


class SkippedFiles:
    """The distinct bad files of a run, in the order found; each is logged once as a warning."""

    def __init__(self) -> None:
        self._by_path: dict[Path, SkippedFile] = {}

    def add(self, skipped: SkippedFile) -> bool:
        """Record ``skipped``; True (and one warning) the first time its file is seen."""
        if skipped.path in self._by_path:
            return False
        self._by_path[skipped.path] = skipped
        log.warning("skipping bad audio file %s: %s", skipped.path, skipped.reason)
        return True

    def __len__(self) -> int:
        return len(self._by_path)

    def __iter__(self):
        return iter(self._by_path.values())

    def report(self) -> str:
        """One ``path<TAB>reason`` line per file (the run's ``data/skipped_files.tsv`` artifact)."""
        return "".join(f"{_printable(s.path)}\t{s.reason}\n" for s in self)


def _printable(path: object) -> str:
    """``path`` as UTF-8 text, bytes of a name that is not UTF-8 written as ``\\xff``."""
    return os.fsencode(str(path)).decode("utf-8", "backslashreplace")
