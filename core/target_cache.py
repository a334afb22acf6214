"""The target cache: every teacher's targets for every audio file of a dataset, on disk.

``mertlab targets build SPEC`` fills it; training with ``data.target_cache: DIR`` reads the
frames of each crop from it instead of running the teachers. Layout::

    DIR/<teacher name>-<teacher fingerprint>/     one folder per teacher version
        manifest.json                             format, teacher, params, TargetInfo, fingerprint, windowing
        <key[:2]>/<key>.npy                       [frames, channels] targets of one whole audio file

* **Versioned by teacher**: the folder name carries :meth:`Teacher.fingerprint` (params + fitted
  state / weights), so changing one teacher's params points it at a new, empty folder while the
  other teachers' folders stay valid. Two aliases of the same teacher version share a folder.
* **Versioned by audio file**: ``key`` hashes the file's resolved path, size and modification
  time (:func:`file_key`), so an edited file is a miss and gets recomputed (moving the dataset
  recomputes everything; an edit keeping size and timestamp, e.g. within a filesystem's
  timestamp granularity, goes unnoticed). Entries of edited or deleted files stay on disk.
* **Crash safe**: every file (entries and manifest) is written to a unique temporary name in
  its folder, then renamed over the final name (``os.replace`` is atomic), so readers and
  concurrent builders see a complete entry or none; a rerun skips the entries that exist.
* **Memory-mapped**: entries are ``.npy`` files opened with ``mmap_mode="r"``; training reads
  only the frames of its crop. Codes are stored as int16/int32, features as float32.

Targets are computed on the whole file, resampled to the teacher's sample rate, in windows of
``window_seconds`` so memory stays bounded on long files. Each window is computed on a segment
that extends ``context_seconds`` past it on both sides (clipped at the file's ends) and keeps
only the window's own frames; window edges lie on the teacher's frame grid, so a frame inside
a window is computed exactly as on the whole file whenever the teacher's receptive field is
shorter than the context (spectral teachers: half their longest window/kernel; CQT at MERT's
fmin 32.7 Hz: 1.4 s). The last window runs to the end of the file, so a file has exactly the
frame count the teacher gives for it whole. Approximations, by design:

* teachers with unbounded context (EnCodec's LSTM) or per-clip statistics (``normalize:
  per_clip``/``per_bin``) see the segment, not the whole file; for per-clip statistics the
  cached targets are normalised over (up to) ``window_seconds`` of audio, while on-the-fly
  targets are normalised over each crop -- the two modes then differ by design;
* a segment starts at the nearest native sample to its first frame (less than one native
  sample of misalignment when the file's rate is not the teacher's).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, BinaryIO, Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from mertlab.contracts import TargetInfo, Teacher
from mertlab.data.audio import AudioFile, read_segment, resample
from mertlab.errors import MertlabError
from mertlab.spec import ExperimentSpec
from mertlab.teacher_output import check_targets

FORMAT = "mertlab-target-cache-v1"
MANIFEST = "manifest.json"
BUILD_HINT = "run `mertlab targets build SPEC` to compute them"


@dataclass(frozen=True)
class Windowing:
    """How whole files are cut for the teacher (see the module docstring)."""

    #: Seconds of audio whose frames one teacher call keeps; bounds memory on long files.
    window_seconds: float = 30.0
    #: Audio added on both sides of a window so its edge frames see their true neighbourhood.
    context_seconds: float = 2.0

    def __post_init__(self) -> None:
        if not (self.window_seconds > 0 and self.context_seconds >= 0):
            raise MertlabError(f"target cache windowing: window_seconds must be > 0 and context_seconds >= 0, got {self}")


def file_key(path: str | Path) -> str:
    """Identity of an audio file's current content: hash of resolved path, size and mtime."""
    resolved = Path(path).resolve()
    try:
        stat = resolved.stat()
    except OSError as exc:
        raise MertlabError(f"{path}: cannot read file ({exc.strerror})") from None
    return hashlib.sha256(f"{resolved}\0{stat.st_size}\0{stat.st_mtime_ns}".encode()).hexdigest()[:24]


def storage_dtype(info: TargetInfo) -> np.dtype:
    """Smallest dtype holding the teacher's values: int16/int32 codes, float32 features."""
    if info.kind == "continuous":
        return np.dtype(np.float32)
    return np.dtype(np.int16) if max(info.vocab_sizes, default=0) <= 2**15 else np.dtype(np.int32)


def atomic_write(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Write ``path`` through ``write(file)`` into a unique temporary name beside it, then
    rename: readers never see a partial file, and a failure leaves nothing behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; a shared cache must stay readable
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


class TeacherCache:
    """One teacher version's folder of a target cache (``<root>/<name>-<fingerprint>``).

    ``windowing``: how this build cuts files (builders); None for readers, who accept any.
    """

    def __init__(self, root: str | Path, teacher: Teacher, windowing: Windowing | None = None) -> None:
        self.root = Path(root)
        self.name = teacher.name
        self.fingerprint = teacher.fingerprint()
        self.info = teacher.info
        self.windowing = windowing
        self.folder = self.root / f"{self.name}-{self.fingerprint}"
        self._manifest = {
            "format": FORMAT,
            "teacher": self.name,
            "fingerprint": self.fingerprint,
            "params": teacher.params.model_dump(mode="json"),
            "target_info": {**asdict(self.info), "vocab_sizes": list(self.info.vocab_sizes)},
            "windowing": asdict(windowing) if windowing is not None else None,
        }
        self._manifest_checked = False

    # ----------------------------------------------------------------- entries
    def entry(self, path: str | Path) -> Path:
        """Where the targets of the audio file at ``path`` (in its current state) live."""
        key = file_key(path)
        return self.folder / key[:2] / f"{key}.npy"

    def has(self, path: str | Path) -> bool:
        return self.entry(path).is_file()

    def read(self, path: str | Path) -> np.ndarray:
        """The file's ``[frames, channels]`` targets, memory-mapped (read only what you slice)."""
        entry = self.entry(path)
        try:
            return np.load(entry, mmap_mode="r")
        except FileNotFoundError:
            raise MertlabError(
                f"data.target_cache: no cached {self.name} targets for {path} in {self.folder} "
                f"(new or edited since the build); {BUILD_HINT}"
            ) from None

    def store(self, entry: Path, values: np.ndarray) -> None:
        """Write ``values`` ``[frames, channels]`` as ``entry`` (from :meth:`entry`, taken before
        computing them, so a file edited meanwhile stays a miss) atomically."""
        channels = self.info.dim
        if values.ndim != 2 or values.shape[1] != channels:
            raise MertlabError(f"teacher '{self.name}': targets must be [frames, {channels}], got {values.shape}")
        self.write_manifest()
        atomic_write(entry, lambda f: np.save(f, values.astype(storage_dtype(self.info), copy=False)))

    # ----------------------------------------------------------------- manifest
    def read_manifest(self) -> dict[str, Any] | None:
        path = self.folder / MANIFEST
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise MertlabError(f"{path}: unreadable target cache manifest ({exc}); delete {self.folder} and rebuild") from None

    def check_manifest(self, required: bool) -> None:
        """The folder's manifest must describe this teacher version (and windowing).

        ``required``: a missing manifest is an error (reading) rather than a new folder (building).
        """
        found = self.read_manifest()
        if found is None:
            if required:
                raise MertlabError(self._missing_message())
            return
        keys = ("format", "fingerprint", "target_info") + (("windowing",) if self.windowing is not None else ())
        for key in keys:
            if found.get(key) != self._manifest[key]:
                raise MertlabError(
                    f"{self.folder / MANIFEST}: {key} is {found.get(key)!r}, this build needs "
                    f"{self._manifest[key]!r}; delete {self.folder} (or use another data.target_cache) and rebuild"
                )
        self._manifest_checked = True

    def write_manifest(self) -> None:
        """Create the manifest once (before the first entry), or check the existing one."""
        if self._manifest_checked:
            return
        if self.windowing is None:
            raise ValueError(f"{self.folder}: opened for reading (windowing=None); give the windowing to build")
        self.check_manifest(required=False)
        if not self._manifest_checked:
            text = json.dumps(self._manifest, indent=2, sort_keys=True) + "\n"
            atomic_write(self.folder / MANIFEST, lambda f: f.write(text.encode()))
            self._manifest_checked = True

    def _missing_message(self) -> str:
        others = sorted(p.name.rsplit("-", 1)[1] for p in self.root.glob(f"{self.name}-*") if (p / MANIFEST).is_file())
        note = f"; it holds {self.name} targets of other params/state (fingerprints {', '.join(others)})" if others else ""
        return (
            f"data.target_cache: {self.root} has no targets for teacher '{self.name}' with its current params "
            f"(fingerprint {self.fingerprint}){note}; {BUILD_HINT}"
        )


# --------------------------------------------------------------------------- computing
@torch.no_grad()
def compute_file_targets(teacher: Teacher, file: AudioFile, windowing: Windowing = Windowing(), device: str | torch.device = "cpu") -> np.ndarray:
    """``[frames, channels]`` targets of the whole ``file``, in windows (see the module docstring)."""
    rate, frame_rate = teacher.sample_rate, teacher.info.frame_rate
    window = max(1, round(windowing.window_seconds * frame_rate))
    context = math.ceil(windowing.context_seconds * frame_rate)

    def native(frame: int) -> int:  # native sample where teacher frame `frame` starts
        return min(file.num_frames, round(frame / frame_rate * file.sample_rate))

    chunks = []
    start = 0
    while True:
        first = max(0, start - context)
        a, b = native(first), native(start + window + context)
        wav = resample(read_segment(file, a, b - a), file.sample_rate, rate).to(device)
        lengths = torch.tensor([wav.shape[0]], device=device)
        out = check_targets(teacher, teacher.targets(wav[None], lengths), wav.shape[0], lengths)
        values = out.values[0, : int(out.lengths[0])]
        offset = start - first
        last = b >= file.num_frames
        kept = values[offset:] if last else values[offset: offset + window]
        if not last and kept.shape[0] < window:
            raise MertlabError(
                f"teacher '{teacher.name}' gave {values.shape[0]} frames for {wav.shape[0]} samples, fewer than "
                f"the {offset + window} a window of the target cache needs; raise the context"
            )
        chunks.append(kept.cpu())
        if last:
            return torch.cat(chunks).numpy()
        start += window


@dataclass(frozen=True)
class BuildSummary:
    """What one teacher's build did."""

    alias: str
    teacher: str
    folder: Path
    computed: int
    skipped: int


def build_teacher_cache(
    teacher: Teacher,
    files: list[AudioFile],
    root: str | Path,
    *,
    alias: str | None = None,
    windowing: Windowing = Windowing(),
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> BuildSummary:
    """Compute and store ``teacher``'s targets of every file without a cache entry."""
    alias = alias or teacher.name
    cache = TeacherCache(root, teacher, windowing)
    cache.check_manifest(required=False)
    teacher.to(device).eval()
    computed = skipped = 0
    for file in tqdm(files, desc=f"targets {alias}", unit="file", disable=not progress):
        entry = cache.entry(file.path)
        if entry.is_file():
            skipped += 1
            continue
        try:
            values = compute_file_targets(teacher, file, windowing, device)
        except MertlabError as exc:
            raise MertlabError(f"teachers.{alias} on {file.path}: {exc}") from None
        cache.store(entry, values)
        computed += 1
    return BuildSummary(alias, teacher.name, cache.folder, computed, skipped)


def build_targets(
    spec: ExperimentSpec,
    *,
    registry: Any = None,
    device: str | torch.device = "cpu",
    windowing: Windowing = Windowing(),
    progress: bool = True,
) -> list[BuildSummary]:
    """Fill ``spec.data.target_cache`` with every teacher's targets of every file of ``data.path``
    (training and validation files: the cache is per file, the split is made at training time)."""
    if spec.data.target_cache is None:
        raise MertlabError(
            "data.target_cache: not set; name the cache folder in the spec or with -o data.target_cache=DIR"
        )
    if registry is None:
        from mertlab.registry import get_registry

        registry = get_registry()
    from mertlab.data.datamodule import scan_dataset
    from mertlab.train.run import prepare_data

    teachers = {alias: registry.build("teacher", t.name, t.params) for alias, t in spec.teachers.items()}
    prepare_data(spec)
    files = scan_dataset(spec.data, next(iter(teachers.values())).sample_rate)
    return [
        build_teacher_cache(teacher, files, spec.data.target_cache, alias=alias, windowing=windowing, device=device, progress=progress)
        for alias, teacher in teachers.items()
    ]
