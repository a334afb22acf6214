"""Where a run's time goes: wall-clock and CPU seconds per named phase.

A :class:`PhaseTimer` is entered at each phase boundary (``with timer.phase("training"): ...``).
Phases nest, and each second is counted once, in the innermost open phase: while
``validation`` runs inside ``training``, training's clock is paused, so the phases add up to
the time the timer ran (:meth:`PhaseTimer.total`). CPU seconds are the process's (every
thread, ``time.process_time``): on a machine shared with other jobs the wall time grows with
the load, the CPU time much less, so both are reported.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass


@dataclass
class PhaseTime:
    """Seconds spent in one phase (its nested phases excluded)."""

    wall_s: float = 0.0
    cpu_s: float = 0.0


class PhaseTimer:
    """Exclusive wall and CPU seconds per phase, in the order phases were first entered."""

    def __init__(self) -> None:
        self.phases: dict[str, PhaseTime] = {}
        self._open: list[str] = []
        self._mark = self._now()
        self._started = self._mark

    @staticmethod
    def _now() -> tuple[float, float]:
        return time.perf_counter(), time.process_time()

    def _charge(self) -> None:
        """Add the time since the last boundary to the innermost open phase."""
        now = self._now()
        if self._open:
            spent = self.phases[self._open[-1]]
            spent.wall_s += now[0] - self._mark[0]
            spent.cpu_s += now[1] - self._mark[1]
        self._mark = now

    def start(self, name: str) -> None:
        """Open phase ``name`` (pausing the phase it is nested in); close it with :meth:`stop`."""
        self._charge()
        self.phases.setdefault(name, PhaseTime())
        self._open.append(name)

    def stop(self, name: str) -> None:
        """Close phase ``name`` and any phase still open inside it (e.g. one an exception left open)."""
        if name not in self._open:
            raise RuntimeError(f"phase timer: closing {name!r}, which is not open (open: {self._open})")
        while True:
            self._charge()
            if self._open.pop() == name:
                return

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Count the body's time as ``name`` (nested phases excluded), also when it raises."""
        self.start(name)
        try:
            yield
        finally:
            self.stop(name)

    def total(self) -> PhaseTime:
        """Wall and CPU seconds since the timer was made (every phase, and time outside any)."""
        now = self._now()
        return PhaseTime(now[0] - self._started[0], now[1] - self._started[1])

    def rows(self) -> list[tuple[str, PhaseTime]]:
        """``(phase, time)`` of every phase entered, then ``other`` (time in no phase) and ``total``."""
        self._charge()
        total = self.total()
        rows = list(self.phases.items())
        other = PhaseTime(
            max(0.0, total.wall_s - sum(t.wall_s for _, t in rows)),
            max(0.0, total.cpu_s - sum(t.cpu_s for _, t in rows)),
        )
        return [*rows, ("other", other), ("total", total)]

    def table(self) -> str:
        """The phases as an aligned text table: wall seconds, share of the total, CPU seconds."""
        rows = self.rows()
        total = rows[-1][1].wall_s or 1.0
        width = max(len(name) for name, _ in rows)
        lines = [f"{'phase':<{width}}  {'wall s':>8}  {'share':>6}  {'CPU s':>8}"]
        for name, t in rows:
            lines.append(f"{name:<{width}}  {t.wall_s:8.1f}  {100 * t.wall_s / total:5.1f}%  {t.cpu_s:8.1f}")
        return "\n".join(lines)
