"""The probe half of the dev set: each task's clips rendered (:mod:`.render`) from their MIDI
(:mod:`.midi`), written as FLAC with a CSV in the format ``mertlab probe`` reads
(``path,label,split`` plus descriptive columns; fixed splits, 60/20/20 per class).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from mertlab.data.audio import write_flac
from mertlab.data.demo_tasks import write_task_csv
from mertlab.data.devset.midi import TASKS, Clip, MidiTask, make_clip, split_of
from mertlab.data.devset.render import Renderer

SPLIT_NAMES = ("train", "valid", "test")


@dataclass
class TaskSummary:
    """A written task: its CSV, clip count, seconds of audio and counts per split (and per class
    and split for classification)."""

    name: str
    csv: Path
    clips: int
    seconds: float
    splits: dict[str, int]
    classes: dict[str, dict[str, int]] = field(default_factory=dict)


def task_size(task: MidiTask, per_class: int) -> int:
    """Clips of ``task``: ``per_class`` per class, or ``per_class`` in all for regression."""
    return per_class * max(len(task.classes), 1)


def task_rows(task: MidiTask, per_class: int, seed: int = 0) -> list[dict[str, str]]:
    """The CSV rows of ``task`` (no audio): path, label, split and the clips' info columns."""
    return [
        _row(task, index, per_class, make_clip(task.name, index, seed)) for index in range(task_size(task, per_class))
    ]


def clip_path(task: str, index: int) -> str:
    """A clip's path relative to the task CSV's folder."""
    return f"{task}/{task}_{index:05d}.flac"


def _row(task: MidiTask, index: int, per_class: int, clip: Clip) -> dict[str, str]:
    """A clip's CSV row. Split by position within its class (regression: within the task; the
    clips are independent draws, so position says nothing about the label)."""
    position = index if task.is_regression else index // len(task.classes)
    return {
        "path": clip_path(task.name, index),
        "label": clip.label,
        "split": split_of(position, per_class),
        **clip.info,
    }


def write_task(
    directory: str | Path, name: str, per_class: int, renderer: Renderer, seed: int = 0, progress: bool = True
) -> TaskSummary:
    """Render task ``name`` into ``directory/<name>/`` and write ``directory/<name>.csv``.

    Clips already on disk are kept (a clip is the same on every run), so an interrupted build
    resumes; the CSV is written last, atomically, so it never names a missing file.
    """
    directory = Path(directory)
    task = TASKS[name]
    (directory / name).mkdir(parents=True, exist_ok=True)
    rows, seconds = [], 0.0
    size = task_size(task, per_class)
    for index in tqdm(range(size), desc=f"task {name}", unit="clip", disable=not progress):
        clip = make_clip(name, index, seed)
        path = directory / clip_path(name, index)
        if not path.exists():
            write_flac(path, renderer.render(clip), renderer.sample_rate)
        rows.append(_row(task, index, per_class, clip))
        seconds += clip.seconds
    csv_path = write_task_csv(directory / f"{name}.csv", rows)
    return summarise(name, csv_path, rows, seconds)


def summarise(name: str, csv_path: Path, rows: list[dict[str, str]], seconds: float) -> TaskSummary:
    splits = Counter(r["split"] for r in rows)
    classes: dict[str, dict[str, int]] = {}
    if not TASKS[name].is_regression:
        for label in TASKS[name].classes:
            per_split = Counter(r["split"] for r in rows if r["label"] == label)
            classes[label] = {s: per_split[s] for s in SPLIT_NAMES}
    return TaskSummary(name, csv_path, len(rows), seconds, {s: splits[s] for s in SPLIT_NAMES}, classes)
