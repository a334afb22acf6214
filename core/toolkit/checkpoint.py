"""Saving and loading trained backbones (used by the `hidden` k-means teacher and probing).

Formats :func:`load_backbone` reads, none of which can run code when loaded:

* a backbone file written by :func:`save_backbone`: safetensors (the weights) whose JSON
  header metadata holds ``format: mertlab-backbone-v2`` and ``backbone: {name, params}``;
* the older torch backbone file ``{"format": "mertlab-backbone-v1", "backbone", "state_dict"}``;
* a training checkpoint (Lightning ``.ckpt``) whose ``"mertlab_spec"`` holds the resolved spec
  and whose ``state_dict`` keys of the backbone start with ``"backbone."``;
* ``hf:DIR``, a local Hugging Face model directory (``config.json`` + weights), read by the
  registered backbone that lists its ``model_type`` in ``hf_model_types`` (HuBERT, MERT).

Torch files load with ``weights_only=True`` (:func:`mertlab.toolkit.safe_load.load_torch_file`),
training checkpoints after a check against their sidecar (:func:`load_checkpoint_file`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mertlab.contracts import Backbone
from mertlab.errors import MertlabError
from mertlab.toolkit.checkpoint_sidecar import verify_checkpoint, warn_unverified
from mertlab.toolkit.safe_load import is_safetensors, load_torch_file, read_safetensors, write_safetensors

BACKBONE_FORMAT = "mertlab-backbone-v2"
LEGACY_BACKBONE_FORMAT = "mertlab-backbone-v1"
BACKBONE_PREFIX = "backbone."


def save_backbone(path: str | Path, backbone: Backbone) -> Path:
    """Write ``backbone`` (name, params and weights) to ``path`` as safetensors, atomically."""
    component = {"name": backbone.name, "params": backbone.params.model_dump(mode="json")}
    return write_safetensors(path, backbone.state_dict(), {"format": BACKBONE_FORMAT, "backbone": component})


def is_sharded_checkpoint(path: str | Path) -> bool:
    """Whether ``path`` is a sharded (fsdp) training checkpoint: a folder with ``meta.pt``."""
    path = Path(path)
    return path.is_dir() and (path / "meta.pt").is_file()


def check_not_sharded(path: str | Path) -> None:
    """One clear error for a sharded (fsdp) checkpoint where one file is needed."""
    if is_sharded_checkpoint(path):
        raise MertlabError(
            f"{path}: a sharded (fsdp) checkpoint folder; consolidate it into one file first: "
            f"python -m lightning.pytorch.utilities.consolidate_checkpoint {path}"
        )


def load_checkpoint_file(path: str | Path, what: str = "checkpoint", *, mmap: bool = False) -> Any:
    """A torch file read weights-only (:func:`load_torch_file`), checked first against its
    sidecar when it has one (:func:`~mertlab.toolkit.checkpoint_sidecar.verify_checkpoint`: a
    damaged file is one error naming it). A training checkpoint without a sidecar (written
    before they existed) loads with one warning."""
    record = verify_checkpoint(path)
    data = load_torch_file(path, what, mmap=mmap)
    if record is None and isinstance(data, dict) and "global_step" in data:
        warn_unverified(path)
    return data


def read_backbone_file(path: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(component {name, params}, backbone state_dict)`` stored in ``path`` (any format above)."""
    path = Path(path)
    check_not_sharded(path)
    if not path.is_file():
        raise MertlabError(f"{path}: no such checkpoint file")
    if is_safetensors(path):
        state, meta = read_safetensors(path, "backbone file")
        if meta.get("format") != BACKBONE_FORMAT or not isinstance(meta.get("backbone"), dict):
            raise MertlabError(
                f"{path}: a safetensors file, but not a mertlab backbone (no {BACKBONE_FORMAT} metadata)"
            )
        return meta["backbone"], state
    ckpt = load_checkpoint_file(path)
    if not isinstance(ckpt, dict):
        raise MertlabError(f"{path}: not a mertlab backbone or training checkpoint")
    if ckpt.get("format") == LEGACY_BACKBONE_FORMAT:
        return ckpt["backbone"], ckpt["state_dict"]
    if isinstance(ckpt.get("mertlab_spec"), dict) and isinstance(ckpt.get("state_dict"), dict):
        component = ckpt["mertlab_spec"].get("backbone")
        state = {k[len(BACKBONE_PREFIX) :]: v for k, v in ckpt["state_dict"].items() if k.startswith(BACKBONE_PREFIX)}
        if isinstance(component, dict):
            return component, state
    raise MertlabError(f"{path}: not a mertlab backbone or training checkpoint")


def read_backbone_component(path: str | Path) -> dict[str, Any]:
    """``{name, params}`` of the backbone stored in ``path`` (any file format above), without
    reading its weights (safetensors: the header; torch files: memory-mapped)."""
    path = Path(path)
    check_not_sharded(path)
    if not path.is_file():
        raise MertlabError(f"{path}: no such checkpoint file")
    if is_safetensors(path):
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt", device="cpu") as f:
                meta = {k: json.loads(v) for k, v in (f.metadata() or {}).items()}
        except Exception as exc:  # noqa: BLE001 - a damaged file is a user error
            raise MertlabError(f"{path}: damaged or truncated backbone file, cannot be read ({exc})") from None
        component = meta.get("backbone") if meta.get("format") == BACKBONE_FORMAT else None
    else:
        ckpt = load_torch_file(path, "checkpoint", mmap=True)
        component = None
        if isinstance(ckpt, dict) and ckpt.get("format") == LEGACY_BACKBONE_FORMAT:
            component = ckpt.get("backbone")
        elif isinstance(ckpt, dict) and isinstance(ckpt.get("mertlab_spec"), dict):
            component = ckpt["mertlab_spec"].get("backbone")
    if not isinstance(component, dict) or not isinstance(component.get("name"), str):
        raise MertlabError(f"{path}: not a mertlab backbone or training checkpoint")
    return component


def backbone_depth(source: str | Path, registry: Any = None) -> int:
    """Encoder layers of the backbone ``source`` names (a checkpoint file or ``hf:DIR``), read
    from its metadata without building it: ``num_hidden_layers`` of ``config.json``, or the
    ``num_layers`` of its validated params (presets resolved). One-line :class:`MertlabError`
    when it cannot be read or does not say."""
    directory = hf_directory(source)
    if directory is not None:
        config_path = check_hf_directory(directory)
        try:
            depth = json.loads(config_path.read_text()).get("num_hidden_layers")
        except (json.JSONDecodeError, AttributeError) as exc:
            raise MertlabError(f"{config_path}: not a JSON object ({exc})") from None
    else:
        component = read_backbone_component(source)
        if registry is None:
            from mertlab.plugin_system.registry import get_registry

            registry = get_registry()
        entry = registry.get("backbone", component["name"])
        try:
            depth = getattr(entry.validate_params(component.get("params", {})), "num_layers", None)
        except ValueError as exc:  # pydantic's ValidationError
            raise MertlabError(f"{source}: the stored backbone params do not validate ({exc})") from None
    if not isinstance(depth, int):
        raise MertlabError(f"{source}: its metadata does not give the number of layers")
    return depth


#: ``load_backbone("hf:DIR")``: a local Hugging Face model directory (config.json + weights).
HF_PREFIX = "hf:"


def hf_directory(source: str | Path) -> Path | None:
    """``DIR`` of an ``hf:DIR`` source, else None."""
    text = str(source)
    return Path(text[len(HF_PREFIX) :]) if text.startswith(HF_PREFIX) else None


def check_hf_directory(directory: str | Path) -> Path:
    """``DIR/config.json`` of a Hugging Face model directory; one-line error naming what is missing."""
    directory = Path(directory)
    if not directory.is_dir():
        raise MertlabError(f"hf:{directory}: no such directory (expected a saved Hugging Face model folder)")
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise MertlabError(
            f"hf:{directory}: no config.json in the directory (expected a saved Hugging Face model folder)"
        )
    return config_path


def load_hf_backbone(directory: str | Path, registry: Any = None) -> Backbone:
    """The registered backbone whose ``hf_model_types`` lists ``DIR/config.json``'s
    ``model_type``, loaded from that directory (nothing is downloaded), in eval mode on CPU."""
    config_path = check_hf_directory(directory)
    directory = config_path.parent
    try:
        model_type = json.loads(config_path.read_text()).get("model_type")
    except (json.JSONDecodeError, AttributeError) as exc:
        raise MertlabError(f"{config_path}: not a JSON object ({exc})") from None
    if registry is None:
        from mertlab.plugin_system.registry import get_registry

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
    """Rebuild the backbone stored in ``path`` (any format above, or ``hf:DIR`` for a local
    Hugging Face HuBERT/MERT directory), in eval mode on CPU."""
    directory = hf_directory(path)
    if directory is not None:
        return load_hf_backbone(directory, registry)
    component, state = read_backbone_file(path)
    if registry is None:
        from mertlab.plugin_system.registry import get_registry

        registry = get_registry()
    backbone = registry.build("backbone", component["name"], component.get("params", {}))
    try:
        backbone.load_state_dict(state)
    except RuntimeError as exc:
        raise MertlabError(
            f"{path}: weights do not fit backbone '{component['name']}' ({str(exc).splitlines()[0]})"
        ) from None
    return backbone.eval()
