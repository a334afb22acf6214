"""Undo an optimizer update that leaves a parameter non-finite.

A finite loss and finite (clipped) gradients do not make a finite update: with a learning rate
far too high, AdamW's decoupled weight decay multiplies every weight by ``1 - lr * wd`` (e.g.
``-9999`` at ``lr=1e6``) and the weights overflow within a few steps. :class:`UpdateGuard` keeps
a copy of the parameters and of the optimizer state taken just before the update (into buffers
reused from step to step), checks every parameter after it, and puts both back when one is NaN
or infinite: the step then changed nothing, exactly as a step skipped for a non-finite loss.

The copy costs the memory of the parameters plus the optimizer state once more (Adam: three
times the parameters), on the device that holds them; ``trainer.undo_nonfinite_updates: false``
turns the guard off. Under FSDP each rank keeps and checks its own shard, and the ranks agree
(one all-reduce) so that all of them undo the step or none.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class _Saved:
    """Where one tensor of the model or of the optimizer state was copied."""

    source: Tensor
    buffer: Tensor


class UpdateGuard:
    """Snapshot before an optimizer step (:meth:`snapshot`), undo it if it left a parameter
    non-finite (:meth:`undo_if_nonfinite`)."""

    def __init__(self) -> None:
        self._buffers: dict[tuple[int, str], Tensor] = {}
        self._saved: list[_Saved] = []
        self._fresh: list[Tensor] = []  # parameters without optimizer state before the step
        self._other: dict[tuple[int, str], object] = {}  # non-tensor optimizer state values
        self._params: list[Tensor] = []
        self.armed = False

    def snapshot(self, optimizer: torch.optim.Optimizer) -> None:
        """Copy the parameters of ``optimizer`` and their state, before its step."""
        self._params = [p for group in optimizer.param_groups for p in group["params"]]
        self._saved, self._fresh, self._other = [], [], {}
        for index, param in enumerate(self._params):
            self._saved.append(_Saved(param, self._buffer((index, ""), param)))
            state = optimizer.state.get(param)
            if not state:
                self._fresh.append(param)
                continue
            for key, value in state.items():
                if torch.is_tensor(value):
                    self._saved.append(_Saved(value, self._buffer((index, str(key)), value)))
                else:
                    self._other[(index, str(key))] = value
        with torch.no_grad():
            _copy([s.buffer for s in self._saved], [s.source for s in self._saved])
        self.armed = True

    def _buffer(self, key: tuple[int, str], like: Tensor) -> Tensor:
        buffer = self._buffers.get(key)
        if buffer is None or buffer.shape != like.shape or buffer.dtype != like.dtype or buffer.device != like.device:
            buffer = self._buffers[key] = torch.empty_like(like, memory_format=torch.preserve_format)
        return buffer

    def parameter(self, index: int) -> Tensor:
        """The ``index``-th parameter of the optimizer of the last :meth:`snapshot`."""
        return self._params[index]

    def first_nonfinite(self) -> int | None:
        """Index (in the optimizer's parameter order) of the first non-finite parameter, or None."""
        if not self._params:
            return None
        finite = torch.stack([torch.isfinite(p).all() for p in self._params])
        if bool(finite.all()):
            return None
        return int((~finite).nonzero()[0])

    def undo_if_nonfinite(
        self, optimizer: torch.optim.Optimizer, agree: Callable[[bool], bool] = lambda bad: bad
    ) -> int | None:
        """After the step: when a parameter is non-finite (on any rank: ``agree`` combines the
        ranks' answers), restore the parameters and optimizer state of :meth:`snapshot` and
        return the index of the first non-finite parameter (-1 when only another rank's shard
        was); else None. Does nothing without a snapshot."""
        if not self.armed:
            return None
        self.armed = False
        bad = self.first_nonfinite()
        if not agree(bad is not None):
            return None
        with torch.no_grad():
            _copy([s.source for s in self._saved], [s.buffer for s in self._saved])
        for param in self._fresh:  # the step created their state (first step): drop it again
            optimizer.state.pop(param, None)
        for (index, key), value in self._other.items():
            state = optimizer.state[self._params[index]]
            state[next(k for k in state if str(k) == key)] = value
        return -1 if bad is None else bad


def _copy(destinations: list[Tensor], sources: list[Tensor]) -> None:
    if destinations:
        torch._foreach_copy_(destinations, sources)
