"""On-disk cache of extracted clip features, so re-probing never re-runs a backbone needlessly.

An entry is one :class:`~mertlab.probe.extract.FeatureSet` (``.npz``, every layer) stored under
``<root>/<key[:2]>/<key>.npz``. The key hashes what the features depend on:

* the feature source -- a checkpoint's **content hash** (so a retrained or edited checkpoint
  misses, a copied one hits), the architecture and seed of a random-init backbone, or a
  handcrafted baseline's settings;
* the task's audio files, in order, by resolved path, size and modification time;
* the window length.

Probe settings (layers, epochs, patience, seed of the MLP...) are not part of it: they only
change the probes fitted on the cached features. Entries are written to a unique temporary
name and renamed into place, so an interrupted or concurrent run never leaves a partial entry,
each with a size/SHA-256 record ``<key>.sum.json`` (:mod:`mertlab.toolkit.integrity`, as the
target cache's entries): a damaged entry (truncated, overwritten, not a features file) is named
in one warning and recomputed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from mertlab.errors import MertlabError
from mertlab.probe.extract import FeatureSet
from mertlab.toolkit.integrity import record_problem, write_with_record

log = logging.getLogger(__name__)

#: Default cache folder, relative to the working directory.
DEFAULT_CACHE_DIR = Path(".mertlab-cache") / "features"
CACHE_FORMAT = 1


def file_identity(path: str | Path) -> list[Any]:
    """``[resolved path, size, mtime_ns]`` of a file: changes when the file is edited."""
    path = Path(path)
    try:
        stat = path.stat()
    except OSError as exc:
        raise MertlabError(f"{path}: cannot read ({exc.strerror})") from None
    return [str(path.resolve()), stat.st_size, stat.st_mtime_ns]


def content_hash(paths: Sequence[str | Path]) -> str:
    """SHA-256 of the bytes of ``paths`` (in order, names included): a checkpoint's identity."""
    digest = hashlib.sha256()
    for path in paths:
        path = Path(path)
        digest.update(os.fsencode(path.name) + b"\0")
        try:
            with open(path, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    digest.update(chunk)
        except OSError as exc:
            raise MertlabError(f"{path}: cannot read ({exc.strerror})") from None
    return digest.hexdigest()


class FeatureCache:
    """Features by key under ``root``; ``root=None`` disables caching (always computes)."""

    def __init__(self, root: str | Path | None = DEFAULT_CACHE_DIR) -> None:
        self.root = Path(root) if root is not None else None
        self.hits = 0
        self.misses = 0

    @staticmethod
    def key(source: dict[str, Any], paths: Sequence[str | Path], window_seconds: float) -> str:
        payload = {
            "format": CACHE_FORMAT,
            "source": source,
            "files": [file_identity(p) for p in paths],
            "window_seconds": float(window_seconds),
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()

    def path(self, key: str) -> Path:
        assert self.root is not None
        return self.root / key[:2] / f"{key}.npz"

    def get_or_compute(
        self,
        source: dict[str, Any],
        paths: Sequence[str | Path],
        window_seconds: float,
        compute: Callable[[], FeatureSet],
    ) -> FeatureSet:
        """The cached features of ``source`` on ``paths``, else ``compute()`` (then stored)."""
        if self.root is None:
            self.misses += 1
            return compute()
        entry = self.path(self.key(source, paths, window_seconds))
        features = self._read(entry, paths)
        if features is not None:
            self.hits += 1
            return features
        self.misses += 1
        features = compute()
        features.meta = {**features.meta, "cache_source": source}
        self._store(features, entry)
        return features

    def _read(self, entry: Path, paths: Sequence[str | Path]) -> FeatureSet | None:
        """The intact entry, or None: missing, or damaged (named in one warning, then recomputed
        and replaced by the caller). An entry must match its size/SHA-256 record (entries of
        caches written before records existed are checked by loading them), load as a features
        file and list ``paths``."""
        if not entry.is_file():
            return None
        problem = record_problem(entry)
        if problem is None:
            try:
                features = FeatureSet.load(entry)
            except MertlabError as exc:
                problem = str(exc).removeprefix(f"{entry}: ")
            else:
                if features.paths == [str(p) for p in paths]:
                    return features
                problem = "it holds the features of other files"
        log.warning("feature cache: damaged entry %s (%s); recomputing it", entry, problem)
        return None

    def _store(self, features: FeatureSet, entry: Path) -> None:
        """Write ``features`` as ``entry`` with its size/SHA-256 record, atomically."""
        try:
            write_with_record(entry, features.to_bytes())
        except OSError as exc:
            raise MertlabError(
                f"feature cache {self.root}: cannot write {entry} ({exc.strerror or exc}); "
                "use another --cache-dir or --no-cache"
            ) from None
