"""Ranks in agreement: one digest of a loaded state, one answer to a yes/no question, one
picture of what every rank holds.

Used where a distributed run must not let its ranks drift apart silently: at start-up (every
rank resumed the same checkpoint: :mod:`mertlab.train.startup`) and in recovery (a spike
rollback is executed by all ranks or by none: :mod:`mertlab.train.rollback`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch


def state_digest(state: Any) -> str:
    """SHA-256 of a (nested) checkpoint state: tensors by dtype, shape and bytes, containers in
    key order, other values by type and ``repr``. The same file read on two ranks gives the same
    digest; any changed byte of a tensor gives another one."""
    digest = hashlib.sha256()
    _feed(digest, state)
    return digest.hexdigest()


def _feed(digest: Any, value: Any) -> None:
    if isinstance(value, torch.Tensor):
        tensor = value.detach().cpu().contiguous()
        digest.update(f"T{tensor.dtype}{tuple(tensor.shape)}:".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    elif isinstance(value, np.ndarray):
        array = np.ascontiguousarray(value)
        digest.update(f"A{array.dtype}{array.shape}:".encode())
        digest.update(array.view(np.uint8).reshape(-1) if array.dtype != object else repr(array).encode())
    elif isinstance(value, Mapping):
        digest.update(f"{{{len(value)}:".encode())
        for key in sorted(value, key=repr):
            _feed(digest, key)
            _feed(digest, value[key])
        digest.update(b"}")
    elif isinstance(value, list | tuple):
        digest.update(f"[{len(value)}:".encode())
        for item in value:
            _feed(digest, item)
        digest.update(b"]")
    else:
        digest.update(f"{type(value).__name__}:{value!r};".encode())


def distributed() -> bool:
    """Whether this process is one of several in an initialised process group."""
    return (
        torch.distributed.is_available()
        and torch.distributed.is_initialized()
        and torch.distributed.get_world_size() > 1
    )


def all_ranks(value: Any, group: Any = None) -> list[Any]:
    """``value`` of every rank, in rank order (a picklable object; ``[value]`` in one process)."""
    if not distributed():
        return [value]
    found: list[Any] = [None] * torch.distributed.get_world_size(group)
    torch.distributed.all_gather_object(found, value, group=group)
    return found


def any_rank(trainer: Any, flag: bool) -> bool:
    """True on every rank when ``flag`` is true on at least one (one all-reduce; ``flag`` in one process)."""
    if trainer is None or trainer.world_size == 1:
        return flag
    return trainer.strategy.reduce_boolean_decision(bool(flag), all=False)
