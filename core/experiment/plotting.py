"""Matplotlib helpers shared by the comparison and probe plots (no pyplot: no global state)."""

from __future__ import annotations

from typing import Any


def figure(width: float, height: float) -> Any:
    """A new figure with a constrained layout; ``fig.savefig`` renders it with the Agg canvas."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def colors(n: int) -> list[Any]:
    """``n`` distinct colours (tab10, tab20 above ten)."""
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]
