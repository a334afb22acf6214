"""Saving and loading trained backbones (used by the `hidden` k-means teacher and probing).

Two formats load with :func:`load_backbone`:

* a backbone file written by :func:`save_backbone`:
  ``{"format": "mertlab-backbone-v1", "backbone": {"name", "params"}, "state_dict"}``;
* a training checkpoint (Lightning ``.ckpt``) whose ``"mertlab_spec"`` holds the resolved spec
  and whose ``state_dict`` keys of the backbone start with ``"backbone."``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from mertlab.contracts import Backbone
from mertlab.errors import MertlabError

BACKBONE_FORMAT = "mertlab-backbone-v1"
BACKBONE_PREFIX = "backbone."


def save_backbone(path: str | Path, backbone: Backbone) -> Path:
    """Write ``backbone`` (name, params and weights) to ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": BACKBONE_FORMAT,
        "backbone": {"name": backbone.name, "params": backbone.params.model_dump(mode="json")},
        "state_dict": backbone.state_dict(),
    }
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)
    return path


def _read(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise MertlabError(f"{path}: no such checkpoint file")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is a user error here
        raise MertlabError(f"{path}: not a readable torch checkpoint ({type(exc).__name__}: {exc})") from None


def load_backbone(path: str | Path, registry: Any = None) -> Backbone:
    """Rebuild the backbone stored in ``path`` (either format above), in eval mode on CPU."""
    path = Path(path)
    ckpt = _read(path)
    if ckpt.get("format") == BACKBONE_FORMAT:
        component, state = ckpt["backbone"], ckpt["state_dict"]
    elif "mertlab_spec" in ckpt and "state_dict" in ckpt:
        component = ckpt["mertlab_spec"]["backbone"]
        state = {k[len(BACKBONE_PREFIX):]: v for k, v in ckpt["state_dict"].items() if k.startswith(BACKBONE_PREFIX)}
    else:
        raise MertlabError(f"{path}: not a mertlab backbone or training checkpoint")
    if registry is None:
        from mertlab.registry import get_registry

        registry = get_registry()
    backbone = registry.build("backbone", component["name"], component.get("params", {}))
    backbone.load_state_dict(state)
    return backbone.eval()
