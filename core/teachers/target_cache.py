"""The target cache: every teacher's targets for every audio file of a dataset, on disk.

``mertlab targets build SPEC`` fills it; training with ``data.target_cache: DIR`` reads the
frames of each crop from it instead of running the teachers. Layout::

    DIR/<teacher name>-<teacher fingerprint>/     one folder per teacher version
        manifest.json                             format, teacher, params, TargetInfo, fingerprint, windowing
        <key[:2]>/<key>.npy                       [frames, channels] targets of one whole audio file
        <key[:2]>/<key>.sum.json                  its size and SHA-256 (:mod:`mertlab.toolkit.integrity`)
        <key[:2]>/<key>.bad.json                  or: why the audio file cannot be used (NaN/inf samples,
                                                  undecodable); training skips and counts it

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
fmin 32.7 Hz: 1.4 s; the ``cqt`` teacher's default FFT implementation to ~1e-4 of the peak, its
truncated kernel spectra leaving tiny tails past the kernel). The last window runs to the end of the file, so a file
has exactly the frame count the teacher gives for it whole. Approximations, by design:

* teachers with unbounded context (EnCodec's LSTM) or per-clip statistics (``normalize:
  per_clip``/``per_bin``) see the segment, not the whole file; for per-clip statistics the
  cached targets are normalised over (up to) ``window_seconds`` of audio, while on-the-fly
  targets are normalised over each crop -- the two modes then differ by design;
* a segment starts at the nearest native sample to its first frame (less than one native
  sample of misalignment when the file's rate is not the teacher's).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from mertlab.contracts import TargetInfo, Teacher
from mertlab.data.audio import AudioFile, BadAudioError, check_finite, read_segment, resample
from mertlab.data.dataset import shortest_usable_seconds
from mertlab.data.prepare import prepare_data
from mertlab.data.skipped import SkippedFile, SkippedFiles
from mertlab.data.source import scan_dataset
from mertlab.errors import MertlabError
from mertlab.experiment.spec import ExperimentSpec
from mertlab.plugin_system.registry import get_registry
from mertlab.toolkit.atomic import atomic_write
from mertlab.toolkit.integrity import record_problem, write_with_record
from mertlab.toolkit.teacher_output import check_targets

FORMAT = "mertlab-target-cache-v1"
MANIFEST = "manifest.json"
BUILD_HINT = "run `mertlab targets build SPEC` to compute them"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Windowing:
    """How whole files are cut for the teacher (see the module docstring)."""

    #: Seconds of audio whose frames one teacher call keeps; bounds memory on long files.
    window_seconds: float = 30.0
    #: Audio added on both sides of a window so its edge frames see their true neighbourhood.
    context_seconds: float = 2.0

    def __post_init__(self) -> None:
        if not (self.window_seconds > 0 and self.context_seconds >= 0):
            raise MertlabError(
                f"target cache windowing: window_seconds must be > 0 and context_seconds >= 0, got {self}"
            )


def file_key(path: str | Path) -> str:
    """Identity of an audio file's current content: hash of resolved path, size and mtime."""
    resolved = Path(path).resolve()
    try:
        stat = resolved.stat()
    except OSError as exc:
        raise MertlabError(f"{path}: cannot read file ({exc.strerror})") from None
    return hashlib.sha256(os.fsencode(f"{resolved}\0{stat.st_size}\0{stat.st_mtime_ns}")).hexdigest()[:24]


def _bad_marker(entry: Path) -> Path:
    """Where :meth:`TeacherCache.mark_bad` records why an entry's audio file is unusable."""
    return entry.with_name(entry.stem + ".bad.json")


class DamagedEntryError(MertlabError):
    """A cache entry that fails its checks; names the entry and the audio file it belongs to."""

    def __init__(self, entry: Path, audio: str | Path, problem: str) -> None:
        self.entry, self.audio, self.problem = entry, audio, problem
        super().__init__(f"data.target_cache: damaged entry {entry} (targets of {audio}): {problem}")


def storage_dtype(info: TargetInfo) -> np.dtype:
    """Smallest dtype holding the teacher's values: int16/int32 codes, float32 features."""
    if info.kind == "continuous":
        return np.dtype(np.float32)
    return np.dtype(np.int16) if max(info.vocab_sizes, default=0) <= 2**15 else np.dtype(np.int32)


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
        self._verified: set[Path] = set()  # entries whose checksum this object has checked

    # ----------------------------------------------------------------- entries
    def entry(self, path: str | Path) -> Path:
        """Where the targets of the audio file at ``path`` (in its current state) live."""
        key = file_key(path)
        return self.folder / key[:2] / f"{key}.npy"

    def has(self, path: str | Path) -> bool:
        return self.entry(path).is_file()

    def mark_bad(self, entry: Path, audio: str | Path, reason: str) -> None:
        """Record that the audio file of ``entry`` cannot be used (e.g. NaN samples), so
        readers skip it instead of asking for a rebuild (see :meth:`bad_reason`)."""
        text = json.dumps({"audio": str(audio), "reason": reason}).encode()
        try:
            self.write_manifest()
            atomic_write(_bad_marker(entry), lambda f: f.write(text))
        except OSError as exc:
            raise MertlabError(
                f"data.target_cache: cannot write {_bad_marker(entry)} ({exc.strerror or exc}); the cache folder "
                f"{self.folder} must be writable"
            ) from None

    def bad_reason(self, path: str | Path) -> str | None:
        """Why the audio file at ``path`` (in its current state) was found unusable by a build
        (:meth:`mark_bad`), or None."""
        try:
            found = json.loads(_bad_marker(self.entry(path)).read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return "unusable (found by `mertlab targets build`; its record is damaged)"
        return str(found.get("reason", "unusable")) if isinstance(found, dict) else "unusable"

    def read(self, path: str | Path, verify: bool = True) -> np.ndarray:
        """The file's ``[frames, channels]`` targets, memory-mapped (read only what you slice).

        ``verify``: check the entry's size and checksum against its record the first time this
        object reads it (:meth:`damage`); a damaged entry raises :class:`DamagedEntryError`.
        """
        entry = self.entry(path)
        if not entry.is_file():
            raise MertlabError(
                f"data.target_cache: no cached {self.name} targets for {path} in {self.folder} "
                f"(new or edited since the build); {BUILD_HINT}"
            )
        if verify and entry not in self._verified:
            problem = self.damage(entry, full=True)
            if problem:
                raise DamagedEntryError(entry, path, problem)
            self._verified.add(entry)
        try:
            return np.load(entry, mmap_mode="r")
        except (OSError, ValueError, EOFError) as exc:  # damaged after verification
            raise DamagedEntryError(entry, path, f"unreadable ({exc})") from None

    def damage(self, entry: Path, full: bool = True) -> str | None:
        """What is wrong with the cache file ``entry``, or None when it is intact.

        Always: the ``.npy`` header must parse and the file size must match the header's shape
        and dtype (catches truncation). ``full``: the file's size and SHA-256 must also match
        its record (``<key>.sum.json``, written with the entry), which catches any changed byte;
        entries written before records existed are checked structurally only.
        """
        try:
            size = entry.stat().st_size
            with open(entry, "rb") as f:
                version = np.lib.format.read_magic(f)
                read_header = (
                    np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                )
                shape, _, dtype = read_header(f)
                expected = f.tell() + math.prod(shape) * dtype.itemsize
        except FileNotFoundError:
            return "missing"
        except (OSError, ValueError, EOFError) as exc:
            return f"not a valid .npy file ({' '.join(str(exc).split())[:200]})"
        if size != expected:
            return f"truncated or padded: {size} bytes, its header needs {expected}"
        if len(shape) != 2 or shape[1] != self.info.dim:
            return f"holds an array of shape {shape}, expected [frames, {self.info.dim}]"
        if not full:
            return None
        return record_problem(entry)

    def store(self, entry: Path, values: np.ndarray) -> None:
        """Write ``values`` ``[frames, channels]`` as ``entry`` (from :meth:`entry`, taken before
        computing them, so a file edited meanwhile stays a miss) atomically, with its record
        (size and SHA-256) beside it. A folder that cannot be written is one clear error."""
        channels = self.info.dim
        if values.ndim != 2 or values.shape[1] != channels:
            raise MertlabError(f"teacher '{self.name}': targets must be [frames, {channels}], got {values.shape}")
        buffer = io.BytesIO()
        np.save(buffer, values.astype(storage_dtype(self.info), copy=False))
        blob = buffer.getvalue()
        try:
            self.write_manifest()
            write_with_record(entry, blob)
        except OSError as exc:
            raise MertlabError(
                f"data.target_cache: cannot write {entry} ({exc.strerror or exc}); the cache folder {self.folder} "
                "must be writable to add or repair entries (or point data.target_cache at a writable copy)"
            ) from None
        self._verified.add(entry)

    # ----------------------------------------------------------------- manifest
    def read_manifest(self) -> dict[str, Any] | None:
        path = self.folder / MANIFEST
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise MertlabError(
                f"{path}: unreadable target cache manifest ({exc}); delete {self.folder} and rebuild"
            ) from None

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
        """Create the manifest once (before the first entry), or check the existing one (a
        reader, ``windowing=None``, only checks it)."""
        if self._manifest_checked:
            return
        if self.windowing is None:  # a reader repairing an entry: the folder must already be this teacher's
            self.check_manifest(required=True)
            return
        self.check_manifest(required=False)
        if not self._manifest_checked:
            text = json.dumps(self._manifest, indent=2, sort_keys=True) + "\n"
            atomic_write(self.folder / MANIFEST, lambda f: f.write(text.encode()))
            self._manifest_checked = True

    def _missing_message(self) -> str:
        others = sorted(p.name.rsplit("-", 1)[1] for p in self.root.glob(f"{self.name}-*") if (p / MANIFEST).is_file())
        note = (
            f"; it holds {self.name} targets of other params/state (fingerprints {', '.join(others)})" if others else ""
        )
        return (
            f"data.target_cache: {self.root} has no targets for teacher '{self.name}' with its current params "
            f"(fingerprint {self.fingerprint}){note}; {BUILD_HINT}"
        )


# --------------------------------------------------------------------------- computing
@torch.no_grad()
def compute_file_targets(
    teacher: Teacher, file: AudioFile, windowing: Windowing = Windowing(), device: str | torch.device = "cpu"
) -> np.ndarray:
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
        wav = check_finite(resample(read_segment(file, a, b - a), file.sample_rate, rate), file).to(device)
        lengths = torch.tensor([wav.shape[0]], device=device)
        out = check_targets(teacher, teacher.targets(wav[None], lengths), wav.shape[0], lengths)
        values = out.values[0, : int(out.lengths[0])]
        offset = start - first
        last = b >= file.num_frames
        kept = values[offset:] if last else values[offset : offset + window]
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
    #: damaged entries found and recomputed (also counted in ``computed``)
    repaired: list[Path] = field(default_factory=list)
    #: audio files that cannot be used (NaN/inf samples, undecodable): no entry, marked as such
    bad: list[SkippedFile] = field(default_factory=list)


def build_teacher_cache(
    teacher: Teacher,
    files: list[AudioFile],
    root: str | Path,
    *,
    alias: str | None = None,
    windowing: Windowing = Windowing(),
    device: str | torch.device = "cpu",
    progress: bool = True,
    verify: bool = True,
    skipped_files: SkippedFiles | None = None,
) -> BuildSummary:
    """Compute and store ``teacher``'s targets of every file without an intact cache entry.

    Existing entries are checked (:meth:`TeacherCache.damage`; ``verify``: their checksums
    too, which reads each once) and damaged ones recomputed, each named in a warning. A file
    found unusable while computing (NaN/inf samples, undecodable: :class:`BadAudioError`) gets
    no entry but a marker (:meth:`TeacherCache.mark_bad`), is recorded in ``skipped_files``
    (which names it once in the log) and listed in the summary; later builds skip it too."""
    alias = alias or teacher.name
    cache = TeacherCache(root, teacher, windowing)
    cache.check_manifest(required=False)
    teacher.to(device).eval()
    skipped_files = skipped_files if skipped_files is not None else SkippedFiles()
    computed = skipped = 0
    repaired: list[Path] = []
    bad: list[SkippedFile] = []
    for file in tqdm(files, desc=f"targets {alias}", unit="file", disable=not progress):
        entry = cache.entry(file.path)
        reason = cache.bad_reason(file.path)
        if reason is not None:
            bad.append(SkippedFile(file.path, reason))
            skipped_files.add(bad[-1])
            continue
        if entry.is_file():
            problem = cache.damage(entry, full=verify)
            if problem is None:
                skipped += 1
                continue
            log.warning(
                "data.target_cache: recomputing damaged entry %s (targets of %s): %s", entry, file.path, problem
            )
            repaired.append(entry)
        try:
            values = compute_targets_of(teacher, file, alias, windowing, device)
        except BadAudioError as exc:
            cache.mark_bad(entry, file.path, exc.reason)
            bad.append(SkippedFile(file.path, exc.reason))
            skipped_files.add(bad[-1])
            continue
        cache.store(entry, values)
        computed += 1
    return BuildSummary(alias, teacher.name, cache.folder, computed, skipped, repaired, bad)


def compute_targets_of(
    teacher: Teacher,
    file: AudioFile,
    alias: str,
    windowing: Windowing = Windowing(),
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """:func:`compute_file_targets`, with errors naming the teacher alias and the audio file."""
    try:
        return compute_file_targets(teacher, file, windowing, device)
    except BadAudioError:
        raise  # the file, not the teacher: callers skip it
    except MertlabError as exc:
        raise MertlabError(f"teachers.{alias} on {file.path}: {exc}") from None


def build_targets(
    spec: ExperimentSpec,
    *,
    registry: Any = None,
    device: str | torch.device = "cpu",
    windowing: Windowing = Windowing(),
    progress: bool = True,
    skipped: SkippedFiles | None = None,
) -> list[BuildSummary]:
    """Fill ``spec.data.target_cache`` with every teacher's targets of every file of ``data.path``
    (training and validation files: the cache is per file, the split is made at training time).

    Files are scanned by the rule training uses (:func:`~mertlab.data.dataset.shortest_usable_seconds`
    of the spec's backbone and teachers), so a file training would skip gets no entry; unusable
    files, at the scan or while computing, are recorded in ``skipped`` (each named once in the log)."""
    if spec.data.target_cache is None:
        raise MertlabError(
            "data.target_cache: not set; name the cache folder in the spec or with -o data.target_cache=DIR"
        )
    if registry is None:
        registry = get_registry()
    teachers = {alias: registry.build("teacher", t.name, t.params) for alias, t in spec.teachers.items()}
    backbone = registry.build("backbone", spec.backbone.name, spec.backbone.params)  # its receptive field
    skipped = skipped if skipped is not None else SkippedFiles()
    prepare_data(spec, progress)
    files = scan_dataset(spec.data, backbone.sample_rate, shortest_usable_seconds(backbone, teachers.values()), skipped)
    del backbone
    return [
        build_teacher_cache(
            teacher,
            files,
            spec.data.target_cache,
            alias=alias,
            windowing=windowing,
            device=device,
            progress=progress,
            skipped_files=skipped,
        )
        for alias, teacher in teachers.items()
    ]


@dataclass(frozen=True)
class CacheFolder:
    """One teacher version's folder of a target cache: its manifest's teacher and fingerprint,
    and its size on disk."""

    folder: Path
    teacher: str
    fingerprint: str
    bytes: int


def unused_folders(spec: ExperimentSpec, *, registry: Any = None) -> list[CacheFolder]:
    """The folders of ``spec.data.target_cache`` (those with a target-cache manifest) that no
    teacher of ``spec``, with its current params, fitted state and code, reads: older versions
    left behind by edits of params or code. Other files and folders are not listed."""
    if spec.data.target_cache is None:
        raise MertlabError(
            "data.target_cache: not set; name the cache folder in the spec or with -o data.target_cache=DIR"
        )
    if registry is None:
        registry = get_registry()
    root = Path(spec.data.target_cache)
    if not root.is_dir():
        return []
    used = {TeacherCache(root, registry.build("teacher", t.name, t.params)).folder.name for t in spec.teachers.values()}
    found = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and p.name not in used):
        try:
            manifest = json.loads((folder / MANIFEST).read_text())
        except (OSError, ValueError):
            continue  # not a target-cache folder (or its manifest is unreadable): left alone
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            continue
        size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
        found.append(CacheFolder(folder, str(manifest.get("teacher")), str(manifest.get("fingerprint")), size))
    return found


def remove_folders(folders: list[CacheFolder]) -> None:
    """Delete ``folders`` (from :func:`unused_folders`)."""
    import shutil

    for entry in folders:
        try:
            shutil.rmtree(entry.folder)
        except OSError as exc:
            raise MertlabError(f"data.target_cache: cannot remove {entry.folder} ({exc.strerror or exc})") from None
