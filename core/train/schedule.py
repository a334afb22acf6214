"""Learning-rate schedules: linear warmup, then linear / cosine decay or constant."""

from __future__ import annotations

import math

from mertlab.experiment.spec import OptimSpec


def lr_factor(step: int, optim: OptimSpec, max_steps: int) -> float:
    """Multiplier of the peak lr at optimizer step ``step``."""
    if optim.warmup_steps and step < optim.warmup_steps:
        return (step + 1) / optim.warmup_steps
    if optim.schedule == "constant":
        return 1.0
    span = max(max_steps - optim.warmup_steps, 1)
    progress = min(max(step - optim.warmup_steps, 0) / span, 1.0)
    shape = 1 - progress if optim.schedule == "linear" else 0.5 * (1 + math.cos(math.pi * progress))
    return optim.min_lr_ratio + (1 - optim.min_lr_ratio) * shape
