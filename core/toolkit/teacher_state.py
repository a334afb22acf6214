"""State files of fitted teachers (``kmeans`` centroids, the ``melrvq`` tokenizer...).

A state file is a safetensors file: the tensors, and in its JSON header the ``format`` string
and the ``config`` the state was fitted with -- no pickled code can run when it is read (an
older ``torch.save`` of the same dict still loads, with ``weights_only=True``).
:func:`save_state_file` writes it atomically (readers never see half a file);
:func:`load_state_file` checks the format and that the stored config equals the teacher's
current one, so a state never silently loads into a teacher it was not fitted for.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Iterable

import torch
from torch import Tensor

from mertlab.errors import MertlabError
from mertlab.toolkit.safe_load import is_safetensors, load_torch_file, read_safetensors, write_safetensors


def save_state_file(
    path: str | Path, format: str, config: dict[str, Any], tensors: dict[str, Tensor], *, config_key: str = "config"
) -> Path:
    """Write ``tensors`` with ``{"format", config_key: config}`` as safetensors to ``path`` atomically."""
    return write_safetensors(path, tensors, {"format": format, config_key: config})


def load_state_file(
    path: str | Path, format: str, config: dict[str, Any], who: str, *, config_key: str = "config"
) -> dict[str, Any]:
    """Read a file written by :func:`save_state_file` with ``weights_only=True``.

    Raises one-line :class:`MertlabError` s naming ``path`` when it is missing, unreadable, of
    another format, or fitted with a config that differs from ``config`` (listing the fields).
    """
    path = Path(path)
    if not path.is_file():
        raise MertlabError(f"{who}: state file {path} not found; run `mertlab teachers fit SPEC` to write it")
    if is_safetensors(path):
        tensors, meta = read_safetensors(path, f"{who} state file")
        state: Any = {**meta, **tensors}
    else:
        state = load_torch_file(path, f"{who} state file")
    if not isinstance(state, dict) or state.get("format") != format:
        raise MertlabError(f"{path}: not a {who} state file (expected format {format})")
    stored = state.get(config_key) or {}
    differ = sorted(k for k in stored.keys() | config.keys() if stored.get(k) != config.get(k))
    if differ:
        detail = ", ".join(f"{k}: file {stored.get(k)!r} vs params {config.get(k)!r}" for k in differ)
        raise MertlabError(f"{path} was fitted with different settings ({detail}); rerun `mertlab teachers fit SPEC`")
    return state


def tensor_digest(tensors: Iterable[tuple[str, Tensor]]) -> str:
    """SHA-256 (16 hex digits) over the names and bytes of ``tensors``, for teacher fingerprints."""
    h = hashlib.sha256()
    for name, t in tensors:
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]
