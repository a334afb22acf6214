"""``mertlab dev-data DIR``: the whole dev set -- recordings, probe tasks, README, licences.

Layout of ``DIR``::

    README.md                     what is in it, each package's licence and origin, class counts
    dev-set.json                  the build's settings and counts (a rebuild checks them)
    licenses/<package>.copyright  each Debian package's copyright file
    recordings/<package>/*.flac   pre-training pieces (data.path: DIR/recordings)
    tasks/<task>.csv, tasks/<task>/*.flac   probe tasks (mertlab probe CKPT DIR/tasks/pitch.csv)

Two sizes: ``full`` (what research claims are made on) and ``ci`` (a few minutes of recordings
and ~250 clips per task, for a learning-signal test in CI). The ``ci`` tasks' clips are the
first clips of each class of the ``full`` tasks, bit for bit; their splits are their own.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mertlab import __version__
from mertlab.data.devset.midi import TASKS
from mertlab.data.devset.recordings import RecordingPlan, SourceSummary, write_recordings
from mertlab.data.devset.render import Renderer
from mertlab.data.devset.sources import (
    INSTALL_HINT,
    RECORDINGS,
    SOUNDFONT,
    RecordingSource,
    Soundfont,
    copyright_file,
    missing_packages,
    package_version,
)
from mertlab.data.devset.tasks import TaskSummary, write_task
from mertlab.errors import DataError

#: Bumped when a change to the generator changes what it writes (a rebuild then refuses the old folder).
GENERATOR_VERSION = 1
STAMP = "dev-set.json"


@dataclass(frozen=True)
class DevSetSize:
    """How big a dev set is: the recordings' plan and, per task built, clips per class (regression: clips)."""

    name: str
    recordings: RecordingPlan
    clips: dict[str, int]


SIZES: dict[str, DevSetSize] = {
    s.name: s
    for s in (
        DevSetSize(
            "full",
            RecordingPlan(piece_seconds=10.0, track_seconds=180.0),
            {"pitch": 40, "instrument": 120, "chord": 150, "key": 50, "tempo": 1200},
        ),
        DevSetSize(
            "ci",
            RecordingPlan(piece_seconds=10.0, track_seconds=30.0, max_tracks=3),
            {"pitch": 7, "instrument": 25, "chord": 30, "key": 10, "tempo": 250},
        ),
    )
}


@dataclass
class DevSetSummary:
    directory: Path
    size: str
    recordings: list[SourceSummary]
    tasks: list[TaskSummary]
    versions: dict[str, str] = field(default_factory=dict)

    @property
    def recording_seconds(self) -> float:
        return sum(s.seconds for s in self.recordings)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _identity(size: DevSetSize, seed: int, soundfont: Soundfont) -> dict[str, Any]:
    """What the content of a dev set depends on (compared with ``dev-set.json`` on a rebuild)."""
    return {
        "generator": GENERATOR_VERSION,
        "size": size.name,
        "seed": seed,
        "soundfont_sha256": file_sha256(Path(soundfont.path)),
    }


def _check_stamp(directory: Path, identity: dict[str, Any]) -> None:
    stamp = directory / STAMP
    if not stamp.is_file():
        return
    try:
        found = json.loads(stamp.read_text()).get("identity", {})
    except (OSError, ValueError, AttributeError):
        raise DataError(f"{stamp}: not a dev-set stamp (JSON); choose another folder or delete it") from None
    if found != identity:
        differ = ", ".join(f"{k} {found.get(k)!r} (asked: {v!r})" for k, v in identity.items() if found.get(k) != v)
        raise DataError(
            f"{directory} holds a dev set built with other settings: {differ}; use another folder or delete it"
        )


def build_dev_set(
    directory: str | Path,
    size: str | DevSetSize = "full",
    seed: int = 0,
    progress: bool = True,
    sources: tuple[RecordingSource, ...] = RECORDINGS,
    soundfont: Soundfont = SOUNDFONT,
) -> DevSetSummary:
    """Build (or finish building) the dev set in ``directory``; see the module docstring."""
    directory = Path(directory)
    chosen = SIZES[size] if isinstance(size, str) else size
    missing = missing_packages(sources, soundfont)
    if missing:
        raise DataError(
            f"the dev set's Debian packages are not installed: {', '.join(missing)}; "
            + INSTALL_HINT.format(packages=" ".join(missing))
        )
    identity = _identity(chosen, seed, soundfont)
    _check_stamp(directory, identity)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / STAMP).write_text(json.dumps({"identity": identity, "complete": False}, indent=2) + "\n")
    versions = {p: package_version(p) for p in (*(s.package for s in sources), soundfont.package)}
    _copy_licences(directory / "licenses", [*(s.package for s in sources), soundfont.package])

    recordings = write_recordings(directory / "recordings", sources, chosen.recordings, progress)
    with Renderer(soundfont.path) as renderer:
        tasks = [
            write_task(directory / "tasks", name, chosen.clips[name], renderer, seed, progress)
            for name in TASKS
            if name in chosen.clips
        ]
    summary = DevSetSummary(directory, chosen.name, recordings, tasks, versions)
    (directory / "README.md").write_text(readme(summary, chosen, seed, soundfont))
    (directory / STAMP).write_text(
        json.dumps({"identity": identity, "complete": True, **counts(summary)}, indent=2) + "\n"
    )
    return summary


def _copy_licences(folder: Path, packages: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for package in packages:
        source = copyright_file(package)
        if source is not None:
            shutil.copyfile(source, folder / f"{package}.copyright")


def counts(summary: DevSetSummary) -> dict[str, Any]:
    """The numbers of a build (kept in ``dev-set.json``)."""
    return {
        "recordings": {
            s.source.package: {"tracks": s.tracks, "pieces": s.pieces, "seconds": s.seconds} for s in summary.recordings
        },
        "recording_seconds": summary.recording_seconds,
        "tasks": {t.name: {"clips": t.clips, "seconds": t.seconds, "splits": t.splits} for t in summary.tasks},
        "versions": summary.versions,
    }


# --------------------------------------------------------------------------- README
def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f}"


def _class_counts(task: TaskSummary) -> str:
    if not task.classes:
        return "(regression)"
    distinct = {tuple(c.values()) for c in task.classes.values()}
    if len(distinct) == 1:
        train, valid, test = next(iter(distinct))
        return f"each class {train} / {valid} / {test}"
    return "; ".join(f"{label} {'/'.join(str(v) for v in c.values())}" for label, c in task.classes.items())


def readme(summary: DevSetSummary, size: DevSetSize, seed: int, soundfont: Soundfont) -> str:
    """The dev set's README: contents, licences and origins, and how to use it."""
    plan = size.recordings
    hours = summary.recording_seconds / 3600
    lines = [
        "# mertlab real-music development set",
        "",
        f"Built by `mertlab dev-data {summary.directory} --size {size.name} --seed {seed}` (mertlab {__version__}, "
        f"generator {GENERATOR_VERSION}) from Debian packages. Everything here is derived from those packages and "
        "keeps their licences (below; each package's Debian copyright file is in `licenses/`).",
        "",
        "## Pre-training recordings: `recordings/`",
        "",
        f"{sum(s.pieces for s in summary.recordings)} pieces of {plan.piece_seconds:g} s, 24 kHz mono FLAC, "
        f"{hours:.2f} h in all: at most {plan.track_seconds:g} s of each track"
        + (f", at most {plan.max_tracks} tracks per package" if plan.max_tracks else "")
        + ", the pieces spread evenly over the track; near-silent pieces left out.",
        "",
        "| package | version | what | licence | copyright | origin | tracks | pieces | minutes |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for s in summary.recordings:
        src = s.source
        lines.append(
            f"| `{src.package}` | {summary.versions.get(src.package, 'unknown')} | {src.title} | {src.licence} | "
            f"{src.copyright} | {src.origin} | {s.tracks} | {s.pieces} | {_minutes(s.seconds)} |"
        )
    excluded = [
        f"`{s.source.package}`: {name} ({why})" for s in summary.recordings for name, why in s.source.exclude.items()
    ]
    if excluded:
        lines += ["", "Left out: " + "; ".join(excluded) + "."]
    lines += [
        "",
        "## Probe tasks: `tasks/`",
        "",
        f"Rendered with FluidSynth from generated MIDI (`mertlab.data.devset.midi`), 24 kHz mono FLAC, with the "
        f"soundfont `{soundfont.package}` {summary.versions.get(soundfont.package, 'unknown')}: {soundfont.title}; "
        f"licence {soundfont.licence}, copyright {soundfont.copyright}, origin {soundfont.origin}. "
        "Splits are fixed in each CSV (60/20/20 per class); every clip is generated from its own seed.",
        "",
        "| task | CSV | label | classes | clips | train / valid / test | per class (train / valid / test) "
        "| audio (min) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for t in summary.tasks:
        task = TASKS[t.name]
        classes = str(len(task.classes)) if task.classes else "regression"
        splits = " / ".join(str(t.splits[s]) for s in ("train", "valid", "test"))
        lines.append(
            f"| {t.name} | `tasks/{t.name}.csv` | {task.summary} | {classes} | {t.clips} | {splits} | "
            f"{_class_counts(t)} | {_minutes(t.seconds)} |"
        )
    lines += [
        "",
        "## Use",
        "",
        "```",
        f"mertlab probe CKPT {summary.directory}/tasks/pitch.csv --random-init --baselines cqt,chroma,mfcc",
        "```",
        "",
        f"In a spec: `data: {{path: {summary.directory}/recordings}}` and "
        f"`probe: {{tasks: [{summary.directory}/tasks/pitch.csv, ...]}}`.",
        "",
        "Not used, on purpose: `hyperrogue-music`, `singularity-music` and the FluidR3 soundfont "
        "(`fluid-soundfont-gm`) are kept for independent evaluation, and `musescore-general-soundfont` is a fork "
        "of FluidR3Mono that still plays many of its samples.",
        "",
    ]
    return "\n".join(lines)
