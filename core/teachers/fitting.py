"""``mertlab teachers fit``: fit every teacher of a spec that needs it, on the spec's training audio.

For each teacher with ``requires_fit`` (e.g. ``kmeans``, ``melrvq``): draw random crops of the
training files (``data.crop_seconds``, ``data.batch_size``, the validation files held out
exactly as in training) at the teacher's sample rate, pass after pass over all the files, each
pass with fresh crops (seeded by the spec's seed and the pass), call ``teacher.fit(batches)``,
and write its state to ``teacher.state_file()`` (the path its params name, e.g. ``centroids``).

How many passes: as many as the teacher's ``params.max_fit_frames`` need (the frames one pass
gives: each file's crop x ``info.frame_rate``), at most :data:`MAX_PASSES`, so the fit draws
its frames from all over the data set rather than the first crops; one pass for a teacher
without ``max_fit_frames``. ``passes`` overrides it.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from mertlab.data.audio import AudioFile
from mertlab.data.dataset import CropDataset, collate_crops, seed_worker
from mertlab.data.files import split_files
from mertlab.data.prepare import prepare_data
from mertlab.data.source import scan_dataset
from mertlab.errors import MertlabError
from mertlab.experiment.spec import ExperimentSpec
from mertlab.plugin_system.registry import get_registry


@dataclass(frozen=True)
class FittedTeacher:
    """One fitted teacher: its spec alias, registered name, state file and new fingerprint."""

    alias: str
    name: str
    path: Path
    fingerprint: str
    replaced: bool
    passes: int = 1
    #: what the teacher reports of its fit (:meth:`FittedFrameTeacher.fit_report`), e.g. code usage
    report: dict[str, float] = field(default_factory=dict)


#: The most passes over the training files a fit makes unless told otherwise.
MAX_PASSES = 20


def fit_passes(teacher: Any, files: list[AudioFile], crop_seconds: float) -> int:
    """Passes over ``files`` that give ``teacher`` its ``params.max_fit_frames`` frames (1 when
    it has no such param), at most :data:`MAX_PASSES`."""
    wanted = getattr(teacher.params, "max_fit_frames", None)
    per_pass = sum(min(f.seconds, crop_seconds) for f in files) * teacher.info.frame_rate
    if not wanted or per_pass <= 0:
        return 1
    return max(1, min(MAX_PASSES, math.ceil(wanted / per_pass)))


def crop_batches(
    spec: ExperimentSpec, files: list[AudioFile], sample_rate: int, passes: int
) -> Iterator[tuple[Tensor, Tensor]]:
    """``(wav [B, S], lengths [B])`` batches of random crops: ``passes`` shuffled passes over
    ``files``, each with fresh crops, seeded by ``spec.seed`` and the pass."""
    for n in range(passes):
        seed = spec.seed * 1000 + n
        dataset = CropDataset(files, sample_rate, spec.data.crop_seconds, random_crops=True, seed=seed)
        for batch in DataLoader(
            dataset,
            batch_size=spec.data.batch_size,
            shuffle=True,
            generator=torch.Generator().manual_seed(seed),
            num_workers=spec.data.num_workers,
            collate_fn=collate_crops,
            worker_init_fn=seed_worker,
        ):
            if len(batch):  # bad files (undecodable, NaN) are left out of their batch
                yield batch.wav, batch.lengths


def fit_teachers(
    spec: ExperimentSpec,
    *,
    registry: Any = None,
    device: str = "cpu",
    passes: int | None = None,
    progress: bool = True,
) -> list[FittedTeacher]:
    """Fit and save every ``requires_fit`` teacher of ``spec``; returns what was written.
    ``passes``: over the training files (default: :func:`fit_passes` per teacher)."""
    if registry is None:
        registry = get_registry()
    aliases = [a for a, t in spec.teachers.items() if registry.get("teacher", t.name).component.requires_fit]
    teachers = {a: registry.build("teacher", spec.teachers[a].name, spec.teachers[a].params) for a in aliases}
    missing = [a for a, t in teachers.items() if t.state_file() is None]
    if missing:  # before any (slow) fitting
        raise MertlabError(
            "\n".join(
                f"teachers.{a}.params: teacher '{teachers[a].name}' needs a file to keep its fitted state; "
                f"set its path (see `mertlab schema teacher {teachers[a].name}`)"
                for a in missing
            )
        )
    if not teachers:
        return []
    prepare_data(spec, progress=progress)
    done = []
    for alias, teacher in teachers.items():
        files, _ = split_files(scan_dataset(spec.data, teacher.sample_rate), spec.data.val_fraction)
        teacher.to(device).eval()
        count = passes or fit_passes(teacher, files, spec.data.crop_seconds)
        batches = crop_batches(spec, files, teacher.sample_rate, count)
        if "progress" in inspect.signature(teacher.fit).parameters:
            teacher.fit(batches, progress=progress)
        else:  # a plugin's fit(batches)
            teacher.fit(batches)
        path = Path(teacher.state_file())
        replaced = path.exists()
        teacher.save_state(path)
        report = teacher.fit_report()
        done.append(FittedTeacher(alias, teacher.name, path, teacher.fingerprint(), replaced, count, report))
    return done
