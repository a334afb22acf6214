"""Downstream tasks users bring: a CSV of labelled audio (or a small YAML pointing to one).

CSV columns: ``path`` (audio file, relative to the CSV's folder), ``label`` and, optionally,
``split`` (``train``/``valid``/``test``; ``val``, ``validation`` and ``dev`` mean ``valid``).
Without ``split`` the rows get a seeded 70/15/15 split (stratified by class for classification).

Task types: ``classification`` (one label per row), ``multilabel`` (labels joined by ``;`` or
``|``, an empty label = no tag) and ``regression`` (a number). ``auto`` picks multilabel when a
label contains a separator, regression when every label is a number and one is not an integer,
otherwise classification (integer labels such as MIDI pitches are classes).

A folder works too (the GTZAN layout): each immediate sub-folder is a class and its audio
files (searched recursively) are the examples, e.g. ``genres/blues/blues.00000.wav``; the task
is a classification named after the folder, with the seeded automatic split.

YAML form::

    name: gtzan            # metric prefix probe/<name>/...; default: the CSV's file name
    csv: gtzan.csv         # relative to the YAML's folder
    type: classification   # or multilabel / regression / auto (default)
    seed: 0                # of the automatic split
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mertlab.errors import MertlabError, render_validation_error
from mertlab.experiment.spec import read_yaml

TaskType = Literal["classification", "multilabel", "regression"]
TASK_TYPES: tuple[str, ...] = ("classification", "multilabel", "regression")
SPLITS: tuple[str, ...] = ("train", "valid", "test")
SPLIT_ALIASES = {
    "train": "train",
    "valid": "valid",
    "val": "valid",
    "validation": "valid",
    "dev": "valid",
    "test": "test",
}
#: Fractions of the automatic split (train, valid, test).
AUTO_SPLIT = (0.70, 0.15, 0.15)
MULTILABEL_SEPARATORS = re.compile(r"[;|]")
#: MLflow metric names allow these characters; the task name is part of them.
TASK_NAME = re.compile(r"^[A-Za-z0-9_.\- ]+$")


class TaskError(MertlabError):
    """A downstream task file is invalid (the message names the file, line and column)."""


class TaskFile(BaseModel):
    """The YAML form of a task."""

    model_config = ConfigDict(extra="forbid")

    csv: str = Field(min_length=1, description="CSV with path,label[,split] columns, relative to the YAML's folder.")
    name: str | None = Field(None, description="Task name used in metric names; default: the CSV's file name.")
    type: Literal["auto", "classification", "multilabel", "regression"] = Field(
        "auto", description="Task type; auto detects it from the labels."
    )
    seed: int = Field(0, description="Seed of the automatic 70/15/15 split (when the CSV has no split column).")


@dataclass
class Task:
    """A loaded task. ``targets`` per row: class index (classification), 0/1 vector over
    ``classes`` (multilabel) or the float value (regression). ``lines`` are CSV line numbers."""

    name: str
    type: TaskType
    source: Path
    paths: list[Path]
    targets: np.ndarray
    splits: np.ndarray
    classes: list[str]
    lines: list[int]
    auto_type: bool = False
    auto_split: bool = False

    def indices(self, split: str) -> np.ndarray:
        return np.flatnonzero(self.splits == split)

    @property
    def num_outputs(self) -> int:
        return 1 if self.type == "regression" else len(self.classes)


def load_task(path: str | Path, task_type: str | None = None, name: str | None = None, seed: int | None = None) -> Task:
    """Read a task CSV or YAML. ``task_type``/``name``/``seed`` override the YAML (or the defaults)."""
    path = Path(path)
    if path.is_dir():
        return _folder_task(path, task_type, name, 0 if seed is None else seed)
    if not path.is_file():
        raise TaskError(f"{path}: no such task file or folder")
    settings = TaskFile(csv=path.name)
    csv_path = path
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            settings = TaskFile.model_validate(read_yaml(path))
        except ValidationError as exc:
            raise TaskError("\n".join(f"{path}: {line}" for line in render_validation_error(exc))) from None
        csv_path = path.parent / settings.csv
        if not csv_path.is_file():
            raise TaskError(f"{path}: csv: no such file {csv_path}")
    if task_type is not None and task_type not in ("auto", *TASK_TYPES):
        raise TaskError(f"unknown task type {task_type!r} (use auto, {', '.join(TASK_TYPES)})")
    task_type = task_type or settings.type
    task_name = name or settings.name or csv_path.stem
    if not TASK_NAME.match(task_name):
        raise TaskError(
            f"task name {task_name!r}: use only letters, digits, '_', '-', '.' and spaces (it becomes part of "
            "metric names)"
        )
    return _parse_csv(csv_path, task_type, task_name, settings.seed if seed is None else seed)


def _parse_csv(path: Path, task_type: str, name: str, seed: int) -> Task:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise TaskError(f"{path}: cannot read ({exc})") from None
    reader = csv.reader(text.splitlines())
    header = next(reader, None)
    if not header:
        raise TaskError(f"{path}: empty file (expected a header line with path,label[,split])")
    header = [h.strip().lower() for h in header]
    for column in ("path", "label"):
        if column not in header:
            raise TaskError(
                f"{path}:1: missing column '{column}' (columns: {', '.join(header)}; expected path,label[,split])"
            )
    col = {h: i for i, h in enumerate(header)}
    has_split = "split" in col

    rows: list[tuple[int, Path, str, str | None]] = []
    seen: dict[Path, int] = {}
    for line, fields in enumerate(reader, start=2):
        if not fields or all(not f.strip() for f in fields):
            continue
        if len(fields) != len(header):
            raise TaskError(f"{path}:{line}: {len(fields)} fields, the header has {len(header)}")
        raw_path = fields[col["path"]].strip()
        if not raw_path:
            raise TaskError(f"{path}:{line}: column path: empty")
        audio = Path(raw_path) if Path(raw_path).is_absolute() else path.parent / raw_path
        if not audio.is_file():
            raise TaskError(f"{path}:{line}: column path: no such file {raw_path!r} (looked for {audio})")
        if audio in seen:
            raise TaskError(f"{path}:{line}: column path: {raw_path!r} is listed twice (also line {seen[audio]})")
        seen[audio] = line
        split = None
        if has_split:
            raw_split = fields[col["split"]].strip().lower()
            if raw_split not in SPLIT_ALIASES:
                raise TaskError(
                    f"{path}:{line}: column split: unknown split {fields[col['split']].strip()!r} (use train, "
                    "valid or test)"
                )
            split = SPLIT_ALIASES[raw_split]
        rows.append((line, audio, fields[col["label"]].strip(), split))
    if not rows:
        raise TaskError(f"{path}: no rows after the header")
    return _task_from_rows(path, rows, task_type, name, seed, has_split)


def _folder_task(folder: Path, task_type: str | None, name: str | None, seed: int) -> Task:
    """A classification task from a folder of class sub-folders (see the module docstring)."""
    from mertlab.data.audio import list_audio_paths  # imported here: torchaudio loads on use

    if task_type not in (None, "auto", "classification"):
        raise TaskError(f"{folder}: a folder of class sub-folders is a classification task, not {task_type}")
    task_name = name or folder.name
    if not TASK_NAME.match(task_name):
        raise TaskError(
            f"task name {task_name!r}: use only letters, digits, '_', '-', '.' and spaces (it becomes part of "
            "metric names)"
        )
    extensions = (".wav", ".flac", ".ogg", ".mp3")
    rows: list[tuple[int, Path, str, str | None]] = []
    for class_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
        rows += [(len(rows) + 1, audio, class_dir.name, None) for audio in list_audio_paths(class_dir, extensions)]
    if not rows:
        raise TaskError(
            f"{folder}: no audio files ({', '.join(extensions)}) in class sub-folders (expected "
            "<folder>/<class>/<file>)"
        )
    return _task_from_rows(folder, rows, "classification", task_name, seed, has_split=False)


def _task_from_rows(
    path: Path, rows: list[tuple[int, Path, str, str | None]], task_type: str, name: str, seed: int, has_split: bool
) -> Task:
    labels = [r[2] for r in rows]
    auto_type = task_type == "auto"
    if auto_type:
        task_type = _detect_type(labels)
    lines = [r[0] for r in rows]
    targets, classes = _targets(path, task_type, labels, lines)

    if has_split:
        splits = np.array([r[3] for r in rows])
    else:
        strata = targets if task_type == "classification" else None
        splits = _auto_split(len(rows), strata, seed)
    task = Task(name, task_type, path, [r[1] for r in rows], targets, splits, classes, lines, auto_type, not has_split)  # type: ignore[arg-type]
    _check_splits(task)
    return task


def _is_number(text: str) -> bool:
    try:
        return np.isfinite(float(text))
    except ValueError:
        return False


def _detect_type(labels: list[str]) -> str:
    if any(MULTILABEL_SEPARATORS.search(label) for label in labels):
        return "multilabel"
    if all(_is_number(label) for label in labels) and any(float(label) != int(float(label)) for label in labels):
        return "regression"
    return "classification"


def _targets(path: Path, task_type: str, labels: list[str], lines: list[int]) -> tuple[np.ndarray, list[str]]:
    if task_type == "regression":
        for label, line in zip(labels, lines, strict=True):
            if not _is_number(label):
                raise TaskError(f"{path}:{line}: column label: {label!r} is not a finite number (task type regression)")
        return np.array([float(label) for label in labels], dtype=np.float64), []
    if task_type == "classification":
        for label, line in zip(labels, lines, strict=True):
            if not label:
                raise TaskError(f"{path}:{line}: column label: empty (task type classification)")
        classes = _sorted_classes(set(labels))
        index = {c: i for i, c in enumerate(classes)}
        return np.array([index[label] for label in labels], dtype=np.int64), classes
    tag_sets = [[t.strip() for t in MULTILABEL_SEPARATORS.split(label) if t.strip()] for label in labels]
    classes = _sorted_classes({t for tags in tag_sets for t in tags})
    if not classes:
        raise TaskError(f"{path}: column label: no tags at all (task type multilabel)")
    index = {c: i for i, c in enumerate(classes)}
    targets = np.zeros((len(labels), len(classes)), dtype=np.float32)
    for row, tags in enumerate(tag_sets):
        targets[row, [index[t] for t in tags]] = 1.0
    return targets, classes


def _sorted_classes(names: set[str]) -> list[str]:
    """Numeric class names in numeric order (MIDI pitches), others alphabetically."""
    if all(_is_number(n) for n in names):
        return sorted(names, key=float)
    return sorted(names)


def _auto_split(n: int, strata: np.ndarray | None, seed: int) -> np.ndarray:
    """Seeded 70/15/15 assignment; per class when ``strata`` is given (so every class is in train)."""
    rng = np.random.default_rng(seed)
    splits = np.empty(n, dtype=object)
    groups = [np.arange(n)] if strata is None else [np.flatnonzero(strata == c) for c in np.unique(strata)]
    for members in groups:
        members = rng.permutation(members)
        n_valid = int(round(AUTO_SPLIT[1] * len(members)))
        n_test = int(round(AUTO_SPLIT[2] * len(members)))
        n_train = max(1, len(members) - n_valid - n_test)
        splits[members[:n_train]] = "train"
        splits[members[n_train : n_train + n_valid]] = "valid"
        splits[members[n_train + n_valid :]] = "test"
    return splits.astype(str)


def _check_splits(task: Task) -> None:
    where = f"{task.source}"
    how = " (automatic 70/15/15 split: add rows or a split column)" if task.auto_split else ""
    for split in SPLITS:
        if not len(task.indices(split)):
            raise TaskError(f"{where}: split '{split}' has no rows{how}")
    train = task.indices("train")
    if task.type == "regression":
        if np.ptp(task.targets[train]) == 0:
            raise TaskError(f"{where}: column label: every train row has the same value; nothing to learn")
        return
    if task.type == "classification":
        in_train = set(task.targets[train].tolist())
        if len(in_train) < 2:
            raise TaskError(
                f"{where}: column label: the train split has only one class ({task.classes[next(iter(in_train))]!r})"
            )
    else:
        in_train = {c for c in range(len(task.classes)) if task.targets[train, c].any()}
    for c in range(len(task.classes)):
        if c in in_train:
            continue
        rows = np.flatnonzero(task.targets == c if task.type == "classification" else task.targets[:, c] > 0)
        splits = sorted(set(task.splits[rows].tolist()), key=SPLITS.index)
        raise TaskError(
            f"{where}:{task.lines[rows[0]]}: column label: class {task.classes[c]!r} appears only in "
            f"{' and '.join(splits)}, never in train"
        )
