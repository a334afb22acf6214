"""``mertlab model-info``: size and frame rate of a spec's backbone, for any registered backbone.

The backbone is built on the ``meta`` device (shapes only, no memory, no init cost), so even
MERT-330M-sized models are described instantly.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError

from mertlab.errors import SpecError, validation_problems
from mertlab.experiment.spec import ComponentSpec, apply_overrides, read_with_bases
from mertlab.plugin_system.registry import get_registry

SPEC_SUFFIXES = (".yaml", ".yml")


@dataclass(frozen=True)
class ModelInfo:
    """What ``mertlab model-info`` prints."""

    backbone: str
    preset: str | None
    num_parameters: int
    sample_rate: int
    frame_rate: float
    hidden_dim: int
    num_layers: int

    def rows(self) -> list[tuple[str, str]]:
        return [
            ("backbone", self.backbone),
            ("preset", self.preset or "-"),
            ("parameters", f"{self.num_parameters:,} ({self.num_parameters / 1e6:.1f}M)"),
            ("sample rate", f"{self.sample_rate} Hz"),
            ("frame rate", f"{self.frame_rate:g} Hz"),
            ("hidden dim", str(self.hidden_dim)),
            ("layers", str(self.num_layers)),
        ]


def backbone_component(spec: str, overrides: tuple[str, ...] | list[str] = ()) -> tuple[str, dict[str, Any], str]:
    """``(name, raw params, params path)`` of the backbone described by ``spec``.

    ``spec`` is an experiment spec file (overrides are dotted spec keys, e.g.
    ``backbone.params.preset=large``) or a backbone name (overrides are its params, e.g.
    ``preset=large``).
    """
    if Path(spec).suffix in SPEC_SUFFIXES or Path(spec).is_file():
        data = apply_overrides(read_with_bases(spec), overrides)
        if "backbone" not in data:
            raise SpecError([("backbone", "the spec has no backbone section")], source=spec)
        try:
            component = ComponentSpec.model_validate(data["backbone"])
        except ValidationError as exc:
            raise SpecError(validation_problems(exc, prefix="backbone"), source=spec) from None
        return component.name, component.params, "backbone.params"
    return spec, apply_overrides({}, overrides), "params"


def model_info(spec: str, overrides: tuple[str, ...] | list[str] = (), registry: Any = None) -> ModelInfo:
    """Describe the backbone of ``spec`` (see :func:`backbone_component`)."""
    if registry is None:
        registry = get_registry()
    name, raw_params, path = backbone_component(spec, overrides)
    entry = registry.get("backbone", name)
    try:
        params = entry.validate_params(raw_params)
    except ValidationError as exc:
        raise SpecError(validation_problems(exc, prefix=path), source=spec) from None
    backbone = build_shapes_only(entry, params)
    return ModelInfo(
        backbone=name,
        preset=getattr(params, "preset", None),
        num_parameters=sum(p.numel() for p in backbone.parameters()),
        sample_rate=backbone.sample_rate,
        frame_rate=backbone.frame_rate,
        hidden_dim=backbone.hidden_dim,
        num_layers=backbone.num_layers,
    )


def build_shapes_only(entry: Any, params: Any) -> Any:
    """Build on the meta device; a backbone whose constructor needs real tensors (e.g. it
    computes filters from data) falls back to a normal CPU build."""
    try:
        with torch.device("meta"):
            return entry.build(params)
    except (NotImplementedError, RuntimeError):
        return entry.build(params)
