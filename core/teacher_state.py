"""State files of fitted teachers (``kmeans`` centroids, the ``melrvq`` tokenizer...).

A state file is a ``torch.save`` of a plain dict -- a ``format`` string, the ``config`` the
state was fitted with, and tensors -- so it loads with ``torch.load(weights_only=True)``: no
pickled code ever runs. :func:`save_state_file` writes it atomically (readers never see half a
file); :func:`load_state_file` checks the format and that the stored config equals the
teacher's current one, so a state never silently loads into a teacher it was not fitted for.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Iterable

import torch
from torch import Tensor

from mertlab.errors import MertlabError


def save_state_file(
    path: str | Path, format: str, config: dict[str, Any], tensors: dict[str, Tensor], *, config_key: str = "config"
) -> Path:
    """Write ``{"format", config_key: config, **tensors}`` (tensors moved to CPU) to ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload: dict[str, Any] = {"format": format, config_key: config}
    payload.update({name: t.detach().cpu().contiguous() for name, t in tensors.items()})
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)
    return path


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
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is a user error here
        raise MertlabError(f"{path}: not a readable {who} state file ({type(exc).__name__}: {exc})") from None
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
