"""The one module that touches litdata's internals (its private attributes and internal modules).

mertlab's shards (:mod:`mertlab.data.shards`) and streaming loader (:mod:`mertlab.data.streaming`)
use litdata's public classes (``StreamingDataset``, ``StreamingDataLoader``) and, where litdata
has no public way, a few internals: the loader's counters of what it handed out (to save the
position training *consumed*, not the one the loader prefetched), its ``restore`` flag, the
dataset's epoch, the downloaders' URL schemes, the downloader of one file, and the chunk writer.
Each is reached through one small function here; when a litdata release moves one of them, that
function raises :class:`LitdataAPIError`, one line naming the attribute and the litdata versions
mertlab supports (:data:`SUPPORTED`, the bound in ``pyproject.toml``), instead of a training run
that silently resumes at the wrong place. ``tests/test_litdata_api.py`` checks each against the
installed litdata.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, NamedTuple

from mertlab.errors import MertlabError

#: The litdata versions whose internals this module matches (pyproject.toml's requirement).
SUPPORTED = ">=0.2.50,<0.3"

LOADER = "litdata.StreamingDataLoader"
DATASET = "litdata.StreamingDataset"
DOWNLOADER_MODULE = "litdata.streaming.downloader"
WRITER_MODULE = "litdata.streaming.writer"


class LitdataAPIError(MertlabError):
    """The installed litdata lacks an internal attribute or module mertlab relies on."""


def installed_version() -> str:
    """The installed litdata's version (``"not installed"`` when it is missing)."""
    try:
        return version("litdata")
    except PackageNotFoundError:
        return "not installed"


def moved(what: str) -> LitdataAPIError:
    """The one-line error for an internal ``what`` the installed litdata does not have."""
    return LitdataAPIError(
        f"litdata {installed_version()} has no {what}, which mertlab's shard streaming relies on; "
        f"install a supported litdata ('litdata{SUPPORTED}')"
    )


def quiet() -> None:
    """litdata asks PyPI for a newer version when a dataset is opened; training must not depend
    on the network (nor wait 30 s for it on a cluster without it). Call before importing litdata."""
    os.environ.setdefault("LITDATA_DISABLE_VERSION_CHECK", "1")


def internal(module: str, name: str) -> Any:
    """``name`` of litdata's internal ``module``; :class:`LitdataAPIError` when either moved."""
    quiet()
    try:
        found = importlib.import_module(module)
    except ImportError:
        raise moved(f"module {module}") from None
    try:
        return getattr(found, name)
    except AttributeError:
        raise moved(f"{module}.{name}") from None


def _get(obj: Any, owner: str, attr: str) -> Any:
    try:
        return getattr(obj, attr)
    except AttributeError:
        raise moved(f"{owner}.{attr}") from None


def _set(obj: Any, owner: str, attr: str, value: Any) -> None:
    if not hasattr(obj, attr):  # a new attribute would be ignored by litdata: refuse it
        raise moved(f"{owner}.{attr}")
    setattr(obj, attr, value)


def _int(obj: Any, owner: str, attr: str) -> int:
    value = _get(obj, owner, attr)
    if not isinstance(value, int) or isinstance(value, bool):
        raise moved(f"{owner}.{attr} as an int (found {type(value).__name__})")
    return value


# --------------------------------------------------------------------------- object stores
def downloader_schemes() -> tuple[str, ...]:
    """The URL prefixes litdata's downloaders read (``s3://``, ``gs://``, ``local:``...)."""
    downloaders = internal(DOWNLOADER_MODULE, "_DOWNLOADERS")
    if not isinstance(downloaders, Mapping):
        raise moved(f"{DOWNLOADER_MODULE}._DOWNLOADERS as a mapping of URL prefix -> downloader")
    return tuple(str(prefix) for prefix in downloaders)


def download_file(store: str, remote: str, local: Path) -> None:
    """Copy the file ``remote`` of the object store ``store`` (a URL litdata reads) to ``local``."""
    get_downloader = internal(DOWNLOADER_MODULE, "get_downloader")
    downloader = get_downloader(store, str(local.parent), [])
    _get(downloader, f"{DOWNLOADER_MODULE}.Downloader", "download_file")(remote, str(local))


# --------------------------------------------------------------------------- writing
def binary_writer(folder: str, chunk_bytes: int | str) -> Any:
    """litdata's chunk writer into ``folder`` (``writer[i] = item``, then ``done()`` and ``merge()``)."""
    return internal(WRITER_MODULE, "BinaryWriter")(folder, chunk_bytes=chunk_bytes)


# --------------------------------------------------------------------------- the loader's position
class LoaderCounters(NamedTuple):
    """What a ``StreamingDataLoader`` counted when it handed out a batch: its epoch (from 1),
    the samples it yielded in that epoch, and the worker that produced the batch. Its
    ``state_dict()`` is its position from these three."""

    epoch: int
    samples: int
    worker: int


def loader_counters(loader: Any) -> LoaderCounters:
    """The counters of ``loader`` (a ``StreamingDataLoader``) now."""
    return LoaderCounters(
        _int(loader, LOADER, "current_epoch"),
        _int(loader, LOADER, "_num_samples_yielded_streaming"),
        _int(loader, LOADER, "_latest_worker_idx"),
    )


def set_loader_counters(loader: Any, counters: LoaderCounters) -> None:
    """Set the counters of ``loader``: its ``state_dict()`` is then the position they describe."""
    for attr, value in zip(
        ("current_epoch", "_num_samples_yielded_streaming", "_latest_worker_idx"), counters, strict=True
    ):
        _set(loader, LOADER, attr, value)


def is_restoring(loader: Any) -> bool:
    """``loader`` was given a state (``load_state_dict``) that its next iterator replays."""
    return bool(_get(loader, LOADER, "restore"))


def end_restore(loader: Any) -> None:
    """``loader``'s next iterator starts a new epoch instead of replaying a loaded state."""
    _set(loader, LOADER, "restore", False)


def dataset_epoch(dataset: Any) -> int:
    """The epoch (from 1) ``dataset`` (a ``StreamingDataset``) shuffles for."""
    return _int(dataset, DATASET, "current_epoch")


def set_dataset_epoch(dataset: Any, epoch: int) -> None:
    """Set the epoch of ``dataset`` without the checks of its ``set_epoch`` (which a loaded state skips)."""
    _set(dataset, DATASET, "current_epoch", epoch)
