"""Loading files that may come from elsewhere without running code hidden in them.

A torch pickle can name any Python callable (``os.system``...) that unpickling then calls.
Every torch file mertlab reads (training checkpoints, backbone and teacher-state files of the
older format, pretrained codec weights) goes through :func:`load_torch_file`, which uses
``torch.load(weights_only=True)``: only tensors, plain containers and numbers, plus the few numpy
types allow-listed in :func:`safe_globals` (arrays and scalars of plain dtypes, as RNG states
hold). Anything else is refused with one line naming the file. mertlab's own backbone and
teacher-state files are safetensors (tensors + a JSON header), read by :func:`read_safetensors`.
"""

from __future__ import annotations

import json
import pickle
import re
from pathlib import Path
from typing import Any

import torch

from mertlab.errors import MertlabError
from mertlab.toolkit.atomic import atomic_write

_ZIP_MAGIC = b"PK\x03\x04"
_BLOCKED_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")


def safe_globals() -> list[Any]:
    """The non-tensor types allowed in a torch file besides torch's defaults: numpy arrays,
    scalars and dtypes of plain (non-object) kinds. None of them can call other code."""
    import numpy as np

    multiarray = getattr(np, "_core", None) or np.core
    dtype_classes = [type(np.dtype(code)) for code in "?bBhHiIlLqQefdgFDGUS"]
    return [multiarray.multiarray._reconstruct, multiarray.multiarray.scalar, np.ndarray, np.dtype, *dtype_classes]


def load_torch_file(path: str | Path, what: str = "checkpoint", *, mmap: bool = False) -> Any:
    """``torch.load(path, weights_only=True)`` on CPU; refuses code-carrying pickles.

    ``what`` names the file's role in messages ("checkpoint", "weights file"...). ``mmap``
    maps the tensors instead of reading them (zip-format files; ignored for legacy ones).
    Raises :class:`MertlabError` with one line naming ``path``: missing, damaged/truncated,
    or holding Python objects other than tensors and plain data.
    """
    path = Path(path)
    if not path.is_file():
        raise MertlabError(f"{path}: no such {what} file")
    if mmap:
        with open(path, "rb") as f:
            mmap = f.read(4) == _ZIP_MAGIC
    try:
        with torch.serialization.safe_globals(safe_globals()):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        raise MertlabError(unsafe_message(path, what, exc)) from None
    except Exception as exc:  # noqa: BLE001 - every unreadable file is one user-facing line
        raise MertlabError(f"{path}: damaged or truncated {what}, cannot be read ({_first_line(exc)})") from None


def unsafe_message(path: Path, what: str, exc: BaseException) -> str:
    """The one line for a pickle the weights-only loader stopped: refused when it names a
    Python global (it could run code), otherwise damaged (random bytes, a broken stream)."""
    found = _BLOCKED_GLOBAL.search(str(exc))
    if not found:
        return f"{path}: damaged or truncated {what}, cannot be read (not a valid torch file)"
    return (
        f"{path}: refused to load this {what}: it holds Python objects other than tensors and plain data "
        f"(it references {found.group(1)}), which could run code; mertlab only loads weights-only files"
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


# --------------------------------------------------------------------------- safetensors
def is_safetensors(path: str | Path) -> bool:
    """Whether ``path`` starts like a safetensors file (8-byte header length, then JSON)."""
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{"


def write_safetensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, Any]) -> Path:
    """Write ``tensors`` and JSON-serialisable ``metadata`` (each value JSON-encoded into the
    header) as one safetensors file, atomically (see :func:`mertlab.toolkit.atomic.atomic_write`)."""
    return write_plain_safetensors(path, tensors, {k: json.dumps(v) for k, v in metadata.items()})


def write_plain_safetensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> Path:
    """Like :func:`write_safetensors`, with the header's string ``metadata`` stored as is: the
    layout other tools read (e.g. ``transformers`` expects ``{"format": "pt"}``)."""
    from safetensors.torch import save

    # clone: safetensors refuses tensors sharing memory (tied weights); each is stored on its own
    blob = save({k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}, metadata=metadata)
    return atomic_write(Path(path), lambda f: f.write(blob))


def read_safetensors(path: str | Path, what: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``(tensors, metadata)`` of a file written by :func:`write_safetensors`; a damaged file
    is one :class:`MertlabError` naming it."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            raw = f.metadata() or {}
            tensors = {key: f.get_tensor(key) for key in f.keys()}
        metadata = {k: json.loads(v) for k, v in raw.items()}
    except Exception as exc:  # noqa: BLE001 - a damaged file is a user error
        raise MertlabError(f"{path}: damaged or truncated {what}, cannot be read ({_first_line(exc)})") from None
    return tensors, metadata
