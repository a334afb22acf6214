"""How many codes a discrete teacher's targets use: the perplexity of their histogram."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def code_perplexity(codes: Tensor, vocab_size: int) -> Tensor:
    """exp(entropy) of the code histogram: how many codes are effectively used."""
    counts = torch.bincount(codes.flatten(), minlength=vocab_size).float()
    p = counts / counts.sum().clamp_min(1)
    entropy = -(p * torch.log(p.clamp_min(1e-12))).sum()
    return entropy.exp()


def codebook_perplexities(codes: Tensor, vocab_sizes: Sequence[int]) -> list[float]:
    """:func:`code_perplexity` of each codebook of ``codes`` ``[N, n_codebooks]``."""
    return [float(code_perplexity(codes[:, c], vocab)) for c, vocab in enumerate(vocab_sizes)]
