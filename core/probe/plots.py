"""Per-layer probe plots: score by layer, with the weighted-sum probe and the baselines as
horizontal lines -- for one run (``probe/<task>_layers.png``) and for all children of a sweep."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mertlab.experiment.plotting import colors, figure


def _finish(ax: Any, title: str, metric: str, path: Path) -> Path:
    ax.set_title(title)
    ax.set_xlabel("layer (0 = encoder input)")
    ax.set_ylabel(f"{metric} (higher is better)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="best")
    path.parent.mkdir(parents=True, exist_ok=True)
    ax.figure.savefig(path, dpi=100)
    return path


def _hline(ax: Any, value: float, label: str, color: Any, style: str = ":") -> None:
    if math.isfinite(value):
        ax.axhline(value, linestyle=style, color=color, linewidth=1.2, label=label)


def layer_plot(outcome: Any, path: str | Path) -> Path:
    """Valid and test score of every single-layer probe of a :class:`~.run.ProbeOutcome`; the
    weighted-sum probe, random-init's best and every baseline (test) as horizontal lines."""
    report, metric = outcome.report, outcome.metric
    layers = [r for r in report.probes if r.layer is not None]
    fig = figure(7, 4.2)
    ax = fig.subplots()
    xs = [r.layer for r in layers]
    ax.plot(xs, [r.valid[metric] for r in layers], "o--", color="tab:blue", label="valid")
    ax.plot(xs, [r.test[metric] for r in layers], "o-", color="tab:blue", label="test")
    if outcome.random_init is not None:
        rlayers = [r for r in outcome.random_init.probes if r.layer is not None]
        ax.plot(
            [r.layer for r in rlayers],
            [r.test[metric] for r in rlayers],
            "x-",
            color="tab:gray",
            alpha=0.7,
            label="random init (test)",
        )
    weighted = outcome.weighted()
    if weighted is not None:
        _hline(ax, weighted.test[metric], "weighted sum (test)", "tab:blue", "-.")
    baselines = outcome.baseline_results()
    for result, color in zip(baselines, colors(len(baselines) + 2)[2:], strict=True):
        _hline(ax, result.test[metric], f"{result.name} (test)", color)
    if xs:
        ax.set_xticks(xs)
    return _finish(ax, f"probe '{report.task.name}' by layer", metric, Path(path))


@dataclass
class ChildLayers:
    """One sweep child's test scores read back from MLflow: per layer, weighted, baselines."""

    variant: str
    layers: dict[int, float]
    weighted: float | None = None
    baselines: dict[str, float] = field(default_factory=dict)


def sweep_layer_plot(task: str, metric: str, children: list[ChildLayers], path: str | Path) -> Path:
    """Test score by layer of every child (one colour each; its weighted-sum probe dashed in
    the same colour) and the baselines (from the first child that has each) as dotted lines."""
    fig = figure(8, 4.5)
    ax = fig.subplots()
    for child, color in zip(children, colors(len(children)), strict=True):
        xs = sorted(child.layers)
        ax.plot(xs, [child.layers[x] for x in xs], "o-", color=color, label=child.variant)
        if child.weighted is not None:
            _hline(ax, child.weighted, f"{child.variant} weighted", color, "--")
    seen: dict[str, float] = {}
    for child in children:
        for name, value in child.baselines.items():
            seen.setdefault(name, value)
    for (name, value), color in zip(seen.items(), colors(len(seen) + len(children))[len(children) :], strict=True):
        _hline(ax, value, name, color)
    return _finish(ax, f"probe '{task}' by layer (test)", metric, Path(path))
