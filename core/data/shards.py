"""Sharded data sets: ``mertlab data shard SRC DST`` writes them, training streams them.

Shards are written and read with `litdata <https://github.com/Lightning-AI/litData>`_
(Lightning's streaming-data library): binary chunk files plus litdata's ``index.json``, read from
a local folder or an object store (``s3://``, ``gs://``, ``azure://``...), split per rank and per
DataLoader worker, shuffled (chunk order, then items within a window of chunks) and resumable
mid-epoch (:mod:`mertlab.data.streaming`). Layout::

    DST/
        mertlab_shards.json   format, source, audio encoding, split, counts, longest file, teachers
        train/                litdata: index.json + chunk-*.bin
        val/                  the validation files (same rule as the file dataset: data.val_fraction)

Each item holds one audio file: ``id`` (its place in the sorted source list), ``name`` (its path
under SRC), ``sample_rate`` and ``num_frames`` (of the audio stored), ``audio`` (the file's
original encoded bytes, or a mono FLAC at ``--sample-rate``) and, written with ``--with-targets
SPEC``, ``targets``: each teacher alias's ``[frames, channels]`` targets of the whole file, computed
(or read from the spec's target cache) exactly as the target cache computes them.

A write goes to a hidden temporary folder beside DST that is renamed to DST once complete, so an
interrupted write never leaves a DST that looks complete.
"""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
from tqdm.auto import tqdm

from mertlab.data import litdata_api
from mertlab.data.audio import AudioFile, BadAudioError, check_finite, list_audio_paths, read_segment, resample
from mertlab.data.files import check_audio_files, split_files
from mertlab.data.skipped import SkippedFile
from mertlab.errors import DataError

log = logging.getLogger(__name__)

FORMAT = "mertlab-shards-v1"
META = "mertlab_shards.json"
INDEX = "index.json"  # litdata's index file
SPLITS = ("train", "val")
DEFAULT_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3")
DEFAULT_CHUNK_BYTES = "64MB"


def is_url(path: str | Path) -> bool:
    """``path`` names a store litdata reads (``s3://``, ``gs://``, ``azure://``, ``r2://``,
    ``hf://``, ``local:``): the schemes of litdata's downloaders, not a guess from the name."""
    text = str(path)
    if "://" not in text and not text.startswith("local:"):
        return False
    return text.startswith(litdata_api.downloader_schemes())


def is_shard_path(path: str | Path) -> bool:
    """``path`` holds shards: an object-store URL litdata reads, or a local folder with litdata's
    index file in its ``train/`` split (written by ``mertlab data shard``). Training asks
    :func:`mertlab.data.source.data_source`, which asks this."""
    if is_url(path):
        return True
    return (Path(path) / SPLITS[0] / INDEX).is_file()


def split_location(path: str | Path, split: str) -> str:
    """Where split ``split`` of the shards at ``path`` lives (a URL stays a URL)."""
    return f"{str(path).rstrip('/')}/{split}" if is_url(path) else str(Path(path) / split)


def read_meta(path: str | Path) -> dict[str, Any]:
    """The shards' ``mertlab_shards.json`` (downloaded through litdata for a URL)."""
    where = f"{str(path).rstrip('/')}/{META}"
    try:
        if is_url(path):
            import tempfile

            with tempfile.TemporaryDirectory() as tmp:
                local = Path(tmp) / META
                litdata_api.download_file(str(path), where, local)
                text = local.read_text()
        else:
            text = (Path(path) / META).read_text()
        meta = json.loads(text)
    except litdata_api.LitdataAPIError:
        raise
    except FileNotFoundError:
        raise DataError(
            f"data.path: {path} holds litdata shards without {META}; write them with `mertlab data shard SRC DST`"
        ) from None
    except Exception as exc:  # noqa: BLE001 - network, permissions, JSON: one line naming the file
        raise DataError(
            f"data.path: cannot read {where} ({type(exc).__name__}: {' '.join(str(exc).split())[:200]})"
        ) from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else None
        raise DataError(
            f"data.path: {where} has format {found!r}, expected {FORMAT!r}; rewrite the shards with `mertlab data "
            "shard`"
        )
    return meta


# --------------------------------------------------------------------------- writing
@dataclass
class ShardSummary:
    """What ``mertlab data shard`` wrote."""

    path: Path
    files: dict[str, int]  # split -> items
    seconds: dict[str, float]  # split -> seconds of audio
    teachers: list[str] = field(default_factory=list)  # aliases whose targets the shards hold
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason) of unusable files


class TargetWriter:
    """What ``--with-targets`` adds to every item (see :mod:`mertlab.teachers.shard_targets`)."""

    def describe(self) -> dict[str, dict[str, Any]]:
        """alias -> teacher name, fingerprint, TargetInfo, windowing (for the metadata)."""
        raise NotImplementedError

    def compute(self, file: AudioFile) -> dict[str, np.ndarray]:
        """alias -> ``[frames, channels]`` targets of the whole ``file``."""
        raise NotImplementedError


def check_destination(dst: str | Path) -> Path:
    """DST must be a local folder that does not exist or is empty (one clear error otherwise)."""
    if is_url(dst) or "://" in str(dst):
        raise DataError(
            f"data shard: DST {dst} must be a local folder; copy the finished folder to the object store afterwards "
            "(e.g. `aws s3 sync DST s3://bucket/shards`) and point data.path at that URL"
        )
    path = Path(dst)
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise DataError(f"data shard: DST {path} already exists and is not empty; choose a new folder or delete it")
    return path


def check_paths(src: str | Path, dst: str | Path) -> tuple[Path, Path]:
    """SRC must exist; DST: see :func:`check_destination`."""
    source = Path(src)
    if not source.exists():
        raise DataError(f"data shard: SRC {source} does not exist")
    return source, check_destination(dst)


def encode_audio(file: AudioFile, sample_rate: int | None) -> tuple[bytes, int, int]:
    """``(bytes, sample_rate, num_frames)`` of what a shard stores for ``file``: its original
    bytes (``sample_rate`` None), or the mono mix resampled to ``sample_rate`` as 16-bit FLAC."""
    if sample_rate is None:
        return file.path.read_bytes(), file.sample_rate, file.num_frames
    wav = check_finite(resample(read_segment(file), file.sample_rate, sample_rate), file).clamp(-1.0, 1.0)
    buffer = io.BytesIO()
    sf.write(buffer, wav.numpy(), sample_rate, format="FLAC", subtype="PCM_16")
    return buffer.getvalue(), sample_rate, int(wav.shape[0])


def write_shards(
    src: str | Path,
    dst: str | Path,
    *,
    targets: TargetWriter | None = None,
    sample_rate: int | None = None,
    chunk_bytes: int | str = DEFAULT_CHUNK_BYTES,
    val_fraction: float = 0.1,
    extensions: tuple[str, ...] | list[str] = DEFAULT_EXTENSIONS,
    progress: bool = True,
) -> ShardSummary:
    """Write every usable audio file under ``src`` (a folder or a manifest) as litdata shards in ``dst``.

    ``sample_rate``: store each file as mono FLAC at this rate instead of its original bytes.
    ``val_fraction``: the validation files (``val/``), chosen by the file dataset's rule
    (:func:`~mertlab.data.files.split_files`, a hash of the file name). ``targets``: adds
    each teacher's targets of every file. Unusable files are skipped and listed in the summary
    and the metadata; no usable file is an error.
    """
    source, destination = check_paths(src, dst)
    files, bad = check_audio_files(list_audio_paths(source, extensions, broken_links=True))
    if not files:
        found = f"; {len(bad)} unusable, e.g. {bad[0].path}: {bad[0].reason}" if bad else ""
        raise DataError(f"data shard: no audio files ({', '.join(extensions)}) under {source}{found}")
    root = source if source.is_dir() else source.parent
    ids = {f.path: i for i, f in enumerate(files)}
    train, val = split_files(files, val_fraction)
    described = targets.describe() if targets is not None else {}

    destination.parent.mkdir(parents=True, exist_ok=True)
    partial = destination.parent / f".{destination.name}.partial-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    counts: dict[str, int] = {}
    seconds: dict[str, float] = {}
    longest = 0.0
    try:
        bar = tqdm(total=len(files), desc="data shard", unit="file", disable=not progress)
        for split, members in zip(SPLITS, (train, val), strict=True):
            if not members:
                continue
            writer = None  # created with the first usable file: a split may lose them all
            total = 0.0
            written = 0
            for file in members:
                bar.update(1)
                try:
                    item = shard_item(file, ids[file.path], root, sample_rate, targets)
                except BadAudioError as exc:  # e.g. NaN samples, found when decoding: skipped like at scan time
                    bad.append(SkippedFile(file.path, exc.reason))
                    log.warning("skipping bad audio file %s: %s", file.path, exc.reason)
                    continue
                if writer is None:
                    writer = litdata_api.binary_writer(str(partial / split), chunk_bytes)
                writer[written] = item
                written += 1
                total += item["num_frames"] / item["sample_rate"]
                longest = max(longest, item["num_frames"] / item["sample_rate"])
            if writer is None:
                continue
            writer.done()
            writer.merge()
            counts[split], seconds[split] = written, total
        bar.close()
        if not counts.get(SPLITS[0]):
            raise DataError(
                f"data shard: no usable training file under {source} ({len(bad)} skipped as unusable, e.g. "
                f"{bad[-1].path}: {bad[-1].reason})"
            )
        meta = {
            "format": FORMAT,
            "source": str(source.resolve()),
            "audio": "original" if sample_rate is None else f"flac-{sample_rate}",
            "val_fraction": val_fraction,
            "splits": {s: {"files": counts[s], "seconds": seconds[s]} for s in counts},
            "longest_seconds": longest,
            "teachers": described,
            "skipped": [[str(b.path), b.reason] for b in bad],
        }
        (partial / META).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        if destination.exists():
            destination.rmdir()  # empty (checked above)
        os.replace(partial, destination)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return ShardSummary(destination, counts, seconds, list(described), [(str(b.path), b.reason) for b in bad])


def shard_item(
    file: AudioFile, item_id: int, root: Path, sample_rate: int | None, targets: TargetWriter | None
) -> dict[str, Any]:
    """The item a shard holds for ``file`` (see the module docstring); :class:`BadAudioError`
    when the file cannot be used."""
    blob, rate, frames = encode_audio(file, sample_rate)
    item: dict[str, Any] = {
        "id": item_id,
        "name": _relative(file.path, root),
        "sample_rate": rate,
        "num_frames": frames,
        "audio": blob,
    }
    if targets is not None:
        item["targets"] = targets.compute(file)
    return item


def _relative(path: Path, root: Path) -> str:
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:  # a manifest may list files anywhere
        return path.as_posix()


# --------------------------------------------------------------------------- reading
@dataclass(frozen=True)
class ShardTeacher:
    """One teacher's targets held by shards (from their metadata)."""

    alias: str
    teacher: str
    fingerprint: str
    target_info: Mapping[str, Any]


def shard_teachers(meta: Mapping[str, Any]) -> dict[str, ShardTeacher]:
    return {
        alias: ShardTeacher(alias, d["teacher"], d["fingerprint"], d["target_info"])
        for alias, d in (meta.get("teachers") or {}).items()
    }
