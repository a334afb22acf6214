"""The boundary between a backbone and the objectives: its output's structure is checked here.

:func:`check_backbone_output` runs on what ``Backbone.forward`` returns in every training and
validation step (:mod:`mertlab.train.module`). A violation is one
:class:`~mertlab.errors.BackboneOutputError` line naming the backbone and the plugin
distribution it comes from -- never a shape error from inside an objective's head, blamed on
the objective.

The checks (shapes only, no pass over the values):

* the output is a :class:`~mertlab.contracts.BackboneOutput`;
* ``hidden_states`` holds ``num_layers + 1`` tensors (the extractor's output, then one per
  layer), each floating point and ``[B, num_frames(S), hidden_dim]``;
* ``padding_mask`` is a ``[B, num_frames(S)]`` tensor.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from mertlab.contracts import Backbone, BackboneOutput
from mertlab.errors import BackboneOutputError
from mertlab.plugin_system.registry import component_label


def check_backbone_output(backbone: Backbone, out: Any, batch: int, frames: int) -> BackboneOutput:
    """Check ``backbone``'s output ``out`` for a batch of ``batch`` clips that gives ``frames``
    frames (``backbone.num_frames(samples)``); return it. Raises :class:`BackboneOutputError`
    naming the backbone and its distribution on the first violation."""
    label = component_label(type(backbone), "backbone")
    if not isinstance(out, BackboneOutput):
        raise BackboneOutputError(
            f"{label}: forward() must return mertlab.contracts.BackboneOutput, got {type(out).__name__}"
        )
    states = out.hidden_states
    want = backbone.num_layers + 1
    if not isinstance(states, (tuple, list)) or len(states) != want:
        got = f"{len(states)}" if isinstance(states, (tuple, list)) else f"a {type(states).__name__}"
        raise BackboneOutputError(
            f"{label}: hidden_states must hold num_layers + 1 = {want} tensors (the extractor's output, then "
            f"one per layer), got {got}; fix forward() or num_layers"
        )
    expected = (batch, frames, backbone.hidden_dim)
    for i, h in enumerate(states):
        if not isinstance(h, Tensor) or tuple(h.shape) != expected or not h.dtype.is_floating_point:
            got = f"{h.dtype} of shape {tuple(h.shape)}" if isinstance(h, Tensor) else type(h).__name__
            raise BackboneOutputError(
                f"{label}: hidden_states[{i}] must be a floating-point tensor [batch={batch}, "
                f"frames=num_frames(samples)={frames}, hidden_dim={backbone.hidden_dim}], got {got}; "
                f"fix forward(), num_frames() or hidden_dim"
            )
    padding = out.padding_mask
    if not isinstance(padding, Tensor) or tuple(padding.shape) != (batch, frames):
        got = f"shape {tuple(padding.shape)}" if isinstance(padding, Tensor) else type(padding).__name__
        raise BackboneOutputError(f"{label}: padding_mask must be [batch={batch}, frames={frames}], got {got}")
    return out
