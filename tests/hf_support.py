"""A tiny random ``transformers.HubertModel``: the reference the Hugging Face tests load and compare against."""

from __future__ import annotations

from typing import Any

import pytest
import torch

#: HubertConfig fields of a model small enough for a test (2 layers of width 32).
TINY_HF: dict[str, Any] = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    conv_dim=(16,) * 7,
    num_conv_pos_embeddings=16,
    num_conv_pos_embedding_groups=4,
)


def tiny_hubert(**config: Any) -> Any:
    """A random ``HubertModel`` of :data:`TINY_HF` (``config`` overrides fields) from seed 0, in
    eval mode; the calling test is skipped without ``transformers``."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    return transformers.HubertModel(transformers.HubertConfig(**{**TINY_HF, **config})).eval()
