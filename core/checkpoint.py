"""Saving and loading trained backbones (used by the `hidden` k-means teacher and probing).

Two formats load with :func:`load_backbone`:

* a backbone file written by :func:`save_backbone`:
  ``{"format": "mertlab-backbone-v1", "backbone": {"name", "params"}, "state_dict"}``;
* a training checkpoint (Lightning ``.ckpt``) whose ``"mertlab_spec"`` holds the resolved spec
  and whose ``state_dict`` keys of the backbone start with ``"backbone."``;
* ``hf:DIR``, a local Hugging Face model directory (``config.json`` + weights), read by the
  registered backbone that lists its ``model_type`` in ``hf_model_types`` (HuBERT, MERT).
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


#: ``load_backbone("hf:DIR")``: a local Hugging Face model directory (config.json + weights).
HF_PREFIX = "hf:"


def hf_directory(source: str | Path) -> Path | None:
    """``DIR`` of an ``hf:DIR`` source, else None."""
    text = str(source)
    return Path(text[len(HF_PREFIX):]) if text.startswith(HF_PREFIX) else None


def check_hf_directory(directory: str | Path) -> Path:
    """``DIR/config.json`` of a Hugging Face model directory; one-line error naming what is missing."""
    directory = Path(directory)
    if not directory.is_dir():
        raise MertlabError(f"hf:{directory}: no such directory (expected a saved Hugging Face model folder)")
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise MertlabError(f"hf:{directory}: no config.json in the directory (expected a saved Hugging Face model folder)")
    return config_path


def load_hf_backbone(directory: str | Path, registry: Any = None) -> Backbone:
    """The registered backbone whose ``hf_model_types`` lists ``DIR/config.json``'s
    ``model_type``, loaded from that directory (nothing is downloaded), in eval mode on CPU."""
    import json

    config_path = check_hf_directory(directory)
    directory = config_path.parent
    try:
        model_type = json.loads(config_path.read_text()).get("model_type")
    except (json.JSONDecodeError, AttributeError) as exc:
        raise MertlabError(f"{config_path}: not a JSON object ({exc})") from None
    if registry is None:
        from mertlab.registry import get_registry

        registry = get_registry()
    entries = registry.list("backbone")
    supported = {t: e for e in entries for t in getattr(e.component, "hf_model_types", ())}
    if model_type not in supported:
        raise MertlabError(
            f"{config_path}: model_type {model_type!r} is not loadable "
            f"(registered backbones load: {', '.join(sorted(supported)) or 'none'})"
        )
    return supported[model_type].component.load_hf(directory).eval()


def load_backbone(path: str | Path, registry: Any = None) -> Backbone:
    """Rebuild the backbone stored in ``path`` (either format above, or ``hf:DIR`` for a local
    Hugging Face HuBERT/MERT directory), in eval mode on CPU."""
    directory = hf_directory(path)
    if directory is not None:
        return load_hf_backbone(directory, registry)
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
