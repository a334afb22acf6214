"""``mertlab teachers fit``: fit every teacher of a spec that needs it, on the spec's training audio.

For each teacher with ``requires_fit`` (e.g. ``kmeans``): draw random crops of the training
files (``data.crop_seconds``, ``data.batch_size``, the validation files held out exactly as in
training) at the teacher's sample rate, call ``teacher.fit(batches)``, and write its state
to ``teacher.state_file()`` (the path its params name, e.g. ``centroids``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from mertlab.data.audio import AudioFile
from mertlab.data.datamodule import scan_dataset, split_files
from mertlab.data.dataset import CropDataset, collate_crops, seed_worker
from mertlab.errors import MertlabError
from mertlab.experiment.spec import ExperimentSpec


@dataclass(frozen=True)
class FittedTeacher:
    """One fitted teacher: its spec alias, registered name, state file and new fingerprint."""

    alias: str
    name: str
    path: Path
    fingerprint: str
    replaced: bool


def crop_batches(
    spec: ExperimentSpec, files: list[AudioFile], sample_rate: int, passes: int
) -> Iterator[tuple[Tensor, Tensor]]:
    """``(wav [B, S], lengths [B])`` batches of random crops: ``passes`` shuffled passes over
    ``files``, each with fresh crops, seeded by ``spec.seed``."""
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
    spec: ExperimentSpec, *, registry: Any = None, device: str = "cpu", passes: int = 1
) -> list[FittedTeacher]:
    """Fit and save every ``requires_fit`` teacher of ``spec``; returns what was written."""
    if registry is None:
        from mertlab.plugin_system.registry import get_registry

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
    from mertlab.train.run import prepare_data

    prepare_data(spec)
    done = []
    for alias, teacher in teachers.items():
        files, _ = split_files(scan_dataset(spec.data, teacher.sample_rate), spec.data.val_fraction)
        teacher.to(device).eval()
        teacher.fit(crop_batches(spec, files, teacher.sample_rate, passes))
        path = Path(teacher.state_file())
        replaced = path.exists()
        teacher.save_state(path)
        done.append(FittedTeacher(alias, teacher.name, path, teacher.fingerprint(), replaced))
    return done
