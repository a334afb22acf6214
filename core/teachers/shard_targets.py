"""``mertlab data shard --with-targets SPEC``: each teacher's targets of every file, into the shards.

The targets of a file are those of the target cache (:mod:`mertlab.teachers.target_cache`): read
from the spec's ``data.target_cache`` when it holds an intact entry for the file and the teacher's
current fingerprint, else computed by :func:`~mertlab.teachers.target_cache.compute_targets_of`
on the whole file in the cache's windows, and stored in the cache's dtype. A run on the shards
therefore trains on the targets a run on the files with the target cache trains on.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mertlab.contracts import Teacher
from mertlab.data.audio import AudioFile
from mertlab.data.shards import ShardSummary, TargetWriter, check_paths, write_shards
from mertlab.errors import MertlabError
from mertlab.experiment.spec import ExperimentSpec
from mertlab.plugin_system.registry import get_registry
from mertlab.teachers.target_cache import MANIFEST, TeacherCache, Windowing, compute_targets_of, storage_dtype

log = logging.getLogger(__name__)


class SpecTargets(TargetWriter):
    """The targets of a spec's teachers (by alias), as the target cache holds them."""

    def __init__(
        self,
        teachers: dict[str, Teacher],
        cache_dir: str | Path | None = None,
        windowing: Windowing = Windowing(),
        device: str | torch.device = "cpu",
    ) -> None:
        self.teachers = teachers
        self.windowing = windowing
        self.device = device
        self.caches = {alias: TeacherCache(cache_dir, t) for alias, t in teachers.items()} if cache_dir else {}
        for teacher in teachers.values():
            teacher.to(device).eval()

    def describe(self) -> dict[str, dict[str, Any]]:
        return {
            alias: {
                "teacher": t.name,
                "fingerprint": t.fingerprint(),
                "target_info": {**asdict(t.info), "vocab_sizes": list(t.info.vocab_sizes)},
                "windowing": asdict(self.windowing),
            }
            for alias, t in self.teachers.items()
        }

    def compute(self, file: AudioFile) -> dict[str, np.ndarray]:
        return {alias: self.targets_of(alias, file) for alias in self.teachers}

    def targets_of(self, alias: str, file: AudioFile) -> np.ndarray:
        teacher = self.teachers[alias]
        cache = self.caches.get(alias)
        if cache is not None and (cache.folder / MANIFEST).is_file() and cache.has(file.path):
            try:
                return np.asarray(cache.read(file.path))
            except MertlabError as exc:  # damaged: compute it instead
                log.warning("%s; computing it for the shards", exc)
        values = compute_targets_of(teacher, file, alias, self.windowing, self.device)
        return values.astype(storage_dtype(teacher.info), copy=False)


def shard_with_spec(
    spec: ExperimentSpec | None,
    src: str | Path,
    dst: str | Path,
    *,
    registry: Any = None,
    device: str = "cpu",
    **options: Any,
) -> ShardSummary:
    """:func:`~mertlab.data.shards.write_shards`, with the targets of ``spec``'s teachers when a
    spec is given (and its ``data.extensions`` and ``data.val_fraction`` unless ``options`` set them)."""
    check_paths(src, dst)  # before building the teachers
    if spec is None:
        return write_shards(src, dst, **options)
    if registry is None:
        registry = get_registry()
    options.setdefault("extensions", spec.data.extensions)
    options.setdefault("val_fraction", spec.data.val_fraction)
    teachers = {alias: registry.build("teacher", t.name, t.params) for alias, t in spec.teachers.items()}
    return write_shards(src, dst, targets=SpecTargets(teachers, spec.data.target_cache, device=device), **options)
