"""Registers the ``stability`` callback without importing Lightning: its params and metadata
are here, the class (:mod:`mertlab.plugins.callbacks.stability`) is imported on first use
(a :class:`mertlab.contracts.LazyComponent`), so ``mertlab plugins``/``validate``/``schema``
stay fast."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from mertlab.contracts import LazyComponent, Params
from mertlab.hookspecs import hookimpl


class StabilityParams(Params):
    every_n_steps: int = Field(
        10,
        ge=1,
        description="Instrument (grad norms per block, attention logits, activation RMS, update ratio) every N steps.",
    )
    ema_decay: float = Field(
        0.98, gt=0, lt=1, description="Decay of the loss mean/variance EMA used for the spike z-score."
    )
    spike_z: float = Field(4.0, gt=0, description="A step whose loss z-score exceeds this counts as a spike.")
    warmup_steps: int = Field(20, ge=0, description="Steps before spike detection starts (the EMA needs history).")
    update_ratio: bool = Field(
        True, description="Measure ||dw||/||w|| (keeps one copy of the weights on instrumented steps)."
    )
    spike_action: Literal["log", "skip", "rollback"] = Field(
        "log",
        description="On a loss spike: log it; skip the step's update; or roll back to the newest checkpoint "
        "(weights + optimizer state) and scale the learning rate by rollback_lr_scale.",
    )
    rollback_lr_scale: float = Field(0.5, gt=0, le=1, description="Learning-rate multiplier applied at each rollback.")


STABILITY = LazyComponent(
    "mertlab.plugins.callbacks.stability:StabilityMonitor",
    name="stability",
    summary="Stability metrics: per-block grad norms, attention logits, activation RMS, update ratio, loss spikes",
    Params=StabilityParams,
)


@hookimpl
def register_callbacks(register):
    register(STABILITY)
