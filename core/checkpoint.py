"""Saving and loading trained backbones (used by the `hidden` k-means teacher and probing).

Formats :func:`load_backbone` reads, none of which can run code when loaded:

* a backbone file written by :func:`save_backbone`: safetensors (the weights) whose JSON
  header metadata holds ``format: mertlab-backbone-v2`` and ``backbone: {name, params}``;
* the older torch backbone file ``{"format": "mertlab-backbone-v1", "backbone", "state_dict"}``;
* a training checkpoint (Lightning ``.ckpt``) whose ``"mertlab_spec"`` holds the resolved spec
  and whose ``state_dict`` keys of the backbone start with ``"backbone."``.

Torch files load with ``weights_only=True`` (:func:`mertlab.safe_load.load_torch_file`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from mertlab.contracts import Backbone
from mertlab.errors import MertlabError
from mertlab.safe_load import is_safetensors, load_torch_file, read_safetensors, write_safetensors

BACKBONE_FORMAT = "mertlab-backbone-v2"
LEGACY_BACKBONE_FORMAT = "mertlab-backbone-v1"
BACKBONE_PREFIX = "backbone."


def save_backbone(path: str | Path, backbone: Backbone) -> Path:
    """Write ``backbone`` (name, params and weights) to ``path`` as safetensors, atomically."""
    component = {"name": backbone.name, "params": backbone.params.model_dump(mode="json")}
    return write_safetensors(path, backbone.state_dict(), {"format": BACKBONE_FORMAT, "backbone": component})


def read_backbone_file(path: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(component {name, params}, backbone state_dict)`` stored in ``path`` (any format above)."""
    path = Path(path)
    if not path.is_file():
        raise MertlabError(f"{path}: no such checkpoint file")
    if is_safetensors(path):
        state, meta = read_safetensors(path, "backbone file")
        if meta.get("format") != BACKBONE_FORMAT or not isinstance(meta.get("backbone"), dict):
            raise MertlabError(f"{path}: a safetensors file, but not a mertlab backbone (no {BACKBONE_FORMAT} metadata)")
        return meta["backbone"], state
    ckpt = load_torch_file(path, "checkpoint")
    if not isinstance(ckpt, dict):
        raise MertlabError(f"{path}: not a mertlab backbone or training checkpoint")
    if ckpt.get("format") == LEGACY_BACKBONE_FORMAT:
        return ckpt["backbone"], ckpt["state_dict"]
    if isinstance(ckpt.get("mertlab_spec"), dict) and isinstance(ckpt.get("state_dict"), dict):
        component = ckpt["mertlab_spec"].get("backbone")
        state = {k[len(BACKBONE_PREFIX):]: v for k, v in ckpt["state_dict"].items() if k.startswith(BACKBONE_PREFIX)}
        if isinstance(component, dict):
            return component, state
    raise MertlabError(f"{path}: not a mertlab backbone or training checkpoint")


def load_backbone(path: str | Path, registry: Any = None) -> Backbone:
    """Rebuild the backbone stored in ``path`` (any format above), in eval mode on CPU."""
    component, state = read_backbone_file(path)
    if registry is None:
        from mertlab.registry import get_registry

        registry = get_registry()
    backbone = registry.build("backbone", component["name"], component.get("params", {}))
    try:
        backbone.load_state_dict(state)
    except RuntimeError as exc:
        raise MertlabError(f"{path}: weights do not fit backbone '{component['name']}' ({str(exc).splitlines()[0]})") from None
    return backbone.eval()
