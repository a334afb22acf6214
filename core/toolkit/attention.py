"""Multi-head attention for the built-in backbones: ``scaled_dot_product_attention``, except with
dropout on CPU.

SDPA with ``dropout_p > 0`` has no fused kernel on CPU: it runs its math path with a
``bernoulli_`` mask plus fully-masked-row checks. The same scores -> softmax -> dropout -> ``@ v``
written out, with :func:`mertlab.toolkit.dropout.dropout`'s faster mask, is 1.35x faster there
(8.2 vs 11.1 ms forward + backward for one MERT-95M layer; ``bench/README.md``). Without dropout
(evaluation, probes) and on other devices SDPA's kernels run.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from mertlab.toolkit.dropout import dropout


def attention_with_dropout(q: Tensor, k: Tensor, v: Tensor, keep: Tensor | None, dropout_p: float) -> Tensor:
    """``scaled_dot_product_attention(q, k, v, keep, dropout_p)`` spelled out (``[B, H, T, d]``).
    ``keep``: boolean, broadcastable to ``[B, H, T, T]``, True where a query may attend a key;
    every query needs at least one key (a fully masked row gives NaN here, zeros in SDPA)."""
    scores = (q * (1.0 / math.sqrt(q.shape[-1]))) @ k.transpose(-1, -2)
    if keep is not None:
        scores = scores.masked_fill(~keep, float("-inf"))
    return dropout(torch.softmax(scores, dim=-1), dropout_p) @ v


def attention(q: Tensor, k: Tensor, v: Tensor, keep: Tensor | None, dropout_p: float) -> Tensor:
    """Attention of ``[B, H, T, d]`` queries, keys and values: :func:`attention_with_dropout` on
    CPU when ``dropout_p > 0``, else ``F.scaled_dot_product_attention``."""
    if dropout_p > 0 and q.device.type == "cpu":
        return attention_with_dropout(q, k, v, keep, dropout_p)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=keep, dropout_p=dropout_p)
