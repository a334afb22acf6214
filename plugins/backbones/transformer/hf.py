"""Hugging Face compatibility: the one place mapping HF HuBERT/MERT configs and weights to ours.

* Config: :data:`HF_CONFIG_KEYS` maps our params to ``transformers.HubertConfig`` keys (plus the
  extras of MERT's own ``MERTConfig``: ``attention_relax``, ``deepnorm``, ``sample_rate``);
  :func:`params_from_hf_config` and :func:`hf_config_from_params` are its two directions.
* Weights: our modules carry HF's names, so ``state_dict`` keys are identical;
  :func:`state_dict_from_hf` only strips the ``hubert.`` prefix of ``HubertFor*`` checkpoints and
  renames legacy ``weight_g``/``weight_v`` weight-norm keys (older transformers / MERT files).

No hub access: :func:`load_hf` reads a local directory only.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError
from torch import Tensor, nn

from mertlab.errors import MertlabError
from mertlab.toolkit.atomic import atomic_write
from mertlab.toolkit.safe_load import load_torch_file, write_plain_safetensors

from .params import TransformerParams

if TYPE_CHECKING:  # the backbone imports this module to read and write its HF form
    from .backbone import TransformerBackbone

#: our field -> HubertConfig key, for fields whose values mean the same on both sides.
HF_CONFIG_KEYS: dict[str, str] = {
    "conv_channels": "conv_dim",
    "conv_kernels": "conv_kernel",
    "conv_strides": "conv_stride",
    "conv_bias": "conv_bias",
    "projection_layer_norm": "feat_proj_layer_norm",
    "projection_dropout": "feat_proj_dropout",
    "hidden_dim": "hidden_size",
    "num_layers": "num_hidden_layers",
    "num_heads": "num_attention_heads",
    "ffn_dim": "intermediate_size",
    "layer_norm_first": "do_stable_layer_norm",
    "layer_norm_eps": "layer_norm_eps",
    "pos_conv_kernel": "num_conv_pos_embeddings",
    "pos_conv_groups": "num_conv_pos_embedding_groups",
    "dropout": "hidden_dropout",
    "attention_dropout": "attention_dropout",
    "activation_dropout": "activation_dropout",
    "layer_drop": "layerdrop",
}
#: HubertConfig's defaults for the keys we read (used when a config.json omits one);
#: tests/test_hf_compat.py checks them against transformers.
HF_DEFAULTS: dict[str, Any] = {
    "conv_dim": (512, 512, 512, 512, 512, 512, 512),
    "conv_kernel": (10, 3, 3, 3, 3, 2, 2),
    "conv_stride": (5, 2, 2, 2, 2, 2, 2),
    "conv_bias": False,
    "feat_proj_layer_norm": True,
    "feat_proj_dropout": 0.0,
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
    "do_stable_layer_norm": False,
    "layer_norm_eps": 1e-5,
    "num_conv_pos_embeddings": 128,
    "num_conv_pos_embedding_groups": 16,
    "hidden_dropout": 0.1,
    "attention_dropout": 0.1,
    "activation_dropout": 0.1,
    "layerdrop": 0.1,
    "feat_extract_norm": "group",
    "feat_extract_activation": "gelu",
    "hidden_act": "gelu",
}
EXTRACTOR_MODES: dict[str, str] = {"group_norm": "group", "layer_norm": "layer"}  # ours -> HF
ACTIVATIONS: dict[str, str] = {"gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh", "relu": "relu", "silu": "silu"}
#: HF activation names -> ours (HF's gelu_new/gelu_fast are tanh approximations of GELU).
HF_ACTIVATIONS: dict[str, str] = {
    **{hf: ours for ours, hf in ACTIVATIONS.items()},
    "gelu_new": "gelu_tanh",
    "gelu_fast": "gelu_tanh",
    "swish": "silu",
}
#: HF/MERT options we do not implement, with the value meaning "off".
UNSUPPORTED_HF_OPTIONS: dict[str, Any] = {
    "conv_pos_batch_norm": False,
    "feature_extractor_cqt": False,
    "adapter_attn_dim": None,
}

#: Our fields mapped by code in :func:`hf_config_from_params` (not one key each): activations,
#: extractor norm, and the MERT extras HubertModel ignores without changing its output
#: (attention relaxation is the same softmax; ``sample_rate`` only names the input rate).
CONVERTED_FIELDS = frozenset({"extractor_mode", "activation", "extractor_activation", "attention_relax", "sample_rate"})
#: Our fields that do not change what the exported model computes: training-time settings,
#: the preset name (its values are in the other fields) and the mel frontend's settings.
NO_MODEL_EFFECT = frozenset({"preset", "feature_grad_mult", "gradient_checkpointing", "mel_bins", "mel_n_fft"})
#: Our fields ``transformers.HubertModel`` has no key for: the value it always computes with,
#: and why another value cannot be exported (it would silently be a different model).
HUBERT_FIXED: dict[str, tuple[Any, str]] = {
    "frontend": ("conv", "HubertModel takes waveforms through its conv extractor"),
    "deepnorm": (
        False,
        "HubertModel has no DeepNorm residual scaling; the exported model would compute another function",
    ),
}

#: Legacy weight-norm parameter names -> torch parametrization names used by our module and HF 5.x.
LEGACY_KEY_RENAMES: dict[str, str] = {
    "encoder.pos_conv_embed.conv.weight_g": "encoder.pos_conv_embed.conv.parametrizations.weight.original0",
    "encoder.pos_conv_embed.conv.weight_v": "encoder.pos_conv_embed.conv.parametrizations.weight.original1",
}
#: ``HubertFor*`` task models keep the base model under this attribute.
HF_BASE_MODEL_PREFIX = "hubert."
#: HF omits the mask embedding when SpecAugment is off (mask_time_prob == mask_feature_prob == 0).
OPTIONAL_KEYS = frozenset({"masked_spec_embed"})


# --------------------------------------------------------------------------- config
def params_from_hf_config(config: dict[str, Any], sample_rate: int | None = None) -> TransformerParams:
    """Our params for an HF ``HubertConfig``/MERT ``config.json`` dict.

    ``sample_rate`` (None: the config's MERT ``sample_rate``, else our default 24 kHz) only sets
    the reported frame rate; the weights do not depend on it.
    """
    for key, off in UNSUPPORTED_HF_OPTIONS.items():
        if config.get(key, off) != off:
            raise MertlabError(f"HF config option {key}={config[key]!r} is not supported by the transformer backbone")

    def get(key: str) -> Any:
        return config.get(key, HF_DEFAULTS[key])

    values: dict[str, Any] = {ours: get(hf) for ours, hf in HF_CONFIG_KEYS.items()}
    norm = get("feat_extract_norm")
    modes = {hf: ours for ours, hf in EXTRACTOR_MODES.items()}
    if norm not in modes:
        raise MertlabError(f"HF config feat_extract_norm={norm!r} is not supported (expected one of {sorted(modes)})")
    values["extractor_mode"] = modes[norm]
    for ours, hf in (("activation", "hidden_act"), ("extractor_activation", "feat_extract_activation")):
        name = get(hf)
        if name not in HF_ACTIVATIONS:
            raise MertlabError(f"HF config {hf}={name!r} is not supported (expected one of {sorted(HF_ACTIVATIONS)})")
        values[ours] = HF_ACTIVATIONS[name]
    relax = config.get("attention_relax")  # MERTConfig: -1 (or absent) = off, MERT-330M: 32
    values["attention_relax"] = float(relax) if relax is not None and relax > 0 else None
    values["deepnorm"] = bool(config.get("deepnorm", False))
    chosen_rate = sample_rate if sample_rate is not None else config.get("sample_rate")
    if chosen_rate is not None:
        values["sample_rate"] = chosen_rate
    try:
        return TransformerParams(**values)
    except ValidationError as exc:
        lines = [
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg'].removeprefix('Value error, ')}".lstrip(": ")
            for e in exc.errors()
        ]
        raise MertlabError("HF config does not map to valid transformer params: " + "; ".join(lines)) from None


def hubert_problem(params: TransformerParams, fields: Iterable[str] | None = None) -> str | None:
    """Why ``transformers.HubertModel`` cannot compute what ``params`` describe (one line naming
    the field), or None. ``fields``: check only these (default: every field of ``params``; one
    the mapping does not know is a problem too, so a new field cannot be exported unnoticed)."""
    names = list(type(params).model_fields) if fields is None else list(fields)
    for name in names:
        value = getattr(params, name)
        if name in HUBERT_FIXED:
            expected, why = HUBERT_FIXED[name]
            if value != expected:
                return (
                    f"backbone.params.{name}: {json.dumps(value)} has no Hugging Face HubertModel equivalent ({why}); "
                    f"only {name}: {json.dumps(expected)} exports"
                )
        elif name not in HF_CONFIG_KEYS and name not in CONVERTED_FIELDS and name not in NO_MODEL_EFFECT:
            return f"backbone.params.{name}: the Hugging Face export does not know how HubertModel represents it"
    return None


def hf_config_from_params(params: TransformerParams) -> dict[str, Any]:
    """``HubertConfig(**hf_config_from_params(p))`` builds the HF model with our architecture
    (MERT extras ``attention_relax``/``deepnorm``/``sample_rate`` included, as MERT's own config
    has them; HubertModel ignores them: relaxation is numerically equivalent, DeepNorm is not
    representable there, which :func:`save_hf` refuses). A non-conv frontend has no config."""
    problem = hubert_problem(params, ["frontend"])
    if problem:
        raise MertlabError(problem)
    config: dict[str, Any] = {hf: getattr(params, ours) for ours, hf in HF_CONFIG_KEYS.items()}
    for key in ("conv_dim", "conv_kernel", "conv_stride"):
        config[key] = list(config[key])
    config["feat_extract_norm"] = EXTRACTOR_MODES[params.extractor_mode]
    config["hidden_act"] = ACTIVATIONS[params.activation]
    config["feat_extract_activation"] = ACTIVATIONS[params.extractor_activation]
    config["attention_relax"] = params.attention_relax if params.attention_relax is not None else -1.0
    config["deepnorm"] = params.deepnorm
    config["sample_rate"] = params.sample_rate
    return config


# --------------------------------------------------------------------------- weights
def state_dict_from_hf(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """An HF ``HubertModel``/``HubertFor*``/MERT state dict in our key layout."""
    if any(k.startswith(HF_BASE_MODEL_PREFIX) for k in state):
        # A task model: keep the base model, drop its heads.
        state = {k[len(HF_BASE_MODEL_PREFIX) :]: v for k, v in state.items() if k.startswith(HF_BASE_MODEL_PREFIX)}
    return {LEGACY_KEY_RENAMES.get(k, k): v for k, v in state.items()}


def read_hf_weights(directory: Path) -> dict[str, Tensor]:
    """Tensors of ``model.safetensors`` / ``pytorch_model.bin`` in ``directory`` (sharded too)."""
    for single, index, fmt in (
        ("model.safetensors", "model.safetensors.index.json", "safetensors"),
        ("pytorch_model.bin", "pytorch_model.bin.index.json", "bin"),
    ):
        if (directory / single).is_file():
            files = [directory / single]
        elif (directory / index).is_file():
            weight_map = json.loads((directory / index).read_text())["weight_map"]
            files = [directory / name for name in sorted(set(weight_map.values()))]
        else:
            continue
        state: dict[str, Tensor] = {}
        for path in files:
            if fmt == "safetensors":
                from safetensors.torch import load_file

                state.update(load_file(str(path), device="cpu"))
            else:
                state.update(load_torch_file(path, "Hugging Face weights file"))
        return state
    raise MertlabError(f"{directory}: no model.safetensors or pytorch_model.bin (or their sharded index) found")


def read_hf_params(directory: str | Path, sample_rate: int | None = None) -> TransformerParams:
    """Our backbone's params from a local HF HuBERT/MERT directory's ``config.json``.

    ``sample_rate`` overrides the rate read from ``config.json`` (MERT) or
    ``preprocessor_config.json`` (``sampling_rate``); with neither, 24 kHz (MERT) is assumed.
    """
    directory = Path(directory)
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise MertlabError(f"{directory}: no config.json (expected a saved Hugging Face model directory)")
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as exc:
        raise MertlabError(f"{config_path}: not valid JSON ({exc})") from None
    preprocessor = directory / "preprocessor_config.json"
    if sample_rate is None and "sample_rate" not in config and preprocessor.is_file():
        sample_rate = json.loads(preprocessor.read_text()).get("sampling_rate")
    return params_from_hf_config(config, sample_rate)


def load_hf_weights(backbone: nn.Module, directory: str | Path) -> None:
    """Load the weights of a local HF HuBERT/MERT directory into ``backbone`` (built from
    :func:`read_hf_params` of the same directory); weights that do not fit -> MertlabError."""
    directory = Path(directory)
    state = state_dict_from_hf(read_hf_weights(directory))
    try:
        missing, unexpected = backbone.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches
        raise MertlabError(f"{directory}: weights do not fit the config: {exc}") from None
    missing = [k for k in missing if k not in OPTIONAL_KEYS]
    if missing or unexpected:
        raise MertlabError(
            f"{directory}: weights do not match the HuBERT layout; missing: {missing or 'none'}; "
            f"unexpected: {unexpected or 'none'}"
        )


def save_hf(backbone: TransformerBackbone, directory: str | Path) -> Path:
    """Write ``backbone`` as a ``transformers.HubertModel`` directory: ``config.json``
    (``model_type: hubert``, our architecture via :func:`hf_config_from_params`) and
    ``model.safetensors`` (our state dict: the keys are HF's), each written atomically.

    A backbone HubertModel would compute differently (:func:`hubert_problem`: ``deepnorm``,
    ``frontend: mel``...) is refused with one line naming the field, before anything is written.
    """
    problem = hubert_problem(backbone.params)
    if problem:
        raise MertlabError(problem)
    config = {"model_type": "hubert", "architectures": ["HubertModel"], **hf_config_from_params(backbone.params)}
    directory = Path(directory)
    text = (json.dumps(config, indent=2) + "\n").encode()
    atomic_write(directory / "config.json", lambda f: f.write(text))
    write_plain_safetensors(directory / "model.safetensors", backbone.state_dict(), {"format": "pt"})
    return directory
