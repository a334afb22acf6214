"""Deliberately broken backbones, each making one mistake a plugin author can make; installed
by tests into a plugin manager they build, as a distribution ``broken-backbones 0.0.1``."""

from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor, nn

from mertlab.contracts import Backbone, BackboneOutput, Params
from mertlab.hookspecs import hookimpl


class FrameParams(Params):
    hop_length: int = Field(320, gt=0, description="Samples per frame.")
    hidden_dim: int = Field(16, gt=0, description="Feature width.")
    num_layers: int = Field(2, gt=0, description="Residual blocks.")


class FrameBackbone(Backbone):
    """A correct backbone: ``hop_length``-sample frames, a linear embedding, residual MLP blocks."""

    name = "frame_mlp"
    summary = "frames -> MLP blocks (correct baseline)"
    Params = FrameParams

    def __init__(self, params: FrameParams) -> None:
        super().__init__(params)
        self.extractor = nn.Conv1d(1, params.hidden_dim, kernel_size=params.hop_length, stride=params.hop_length)
        self.mask_embedding = nn.Parameter(torch.zeros(params.hidden_dim))
        self.layers = nn.ModuleList(nn.Linear(params.hidden_dim, params.hidden_dim) for _ in range(params.num_layers))

    @property
    def frame_rate(self) -> float:
        return self.sample_rate / self.params.hop_length

    @property
    def sample_rate(self) -> int:
        return 24000

    def num_frames(self, num_samples: int) -> int:
        return max(0, num_samples // self.params.hop_length)

    def hidden(self, wav: Tensor, padding: Tensor, frame_mask: Tensor | None) -> list[Tensor]:
        x = self.extractor(wav[:, None, :]).transpose(1, 2)
        if frame_mask is not None:
            x = torch.where(frame_mask[:, :, None], self.mask_embedding.to(x.dtype), x)
        x = x.masked_fill(padding[:, :, None], 0.0)
        states = [x]
        for layer in self.layers:
            x = (x + torch.tanh(layer(x))).masked_fill(padding[:, :, None], 0.0)
            states.append(x)
        return states

    def forward(self, wav, lengths=None, frame_mask=None, instrument=False):  # type: ignore[override]
        frames = self.num_frames(wav.shape[1])
        if lengths is None:
            lengths = torch.full((wav.shape[0],), wav.shape[1], device=wav.device)
        padding = torch.arange(frames, device=wav.device)[None, :] >= self.frame_lengths(lengths)[:, None]
        states = self.output(self.hidden(wav, padding, frame_mask))
        zeros = [torch.zeros(()) for _ in self.layers]
        return BackboneOutput(
            hidden_states=tuple(states),
            padding_mask=padding,
            frame_rate=self.frame_rate,
            attn_max_logits=zeros if instrument else None,
            act_rms=zeros if instrument else None,
        )

    def output(self, states: list[Tensor]) -> list[Tensor]:
        """What the broken variants change."""
        return states


class WideHidden(FrameBackbone):
    """Every hidden state one feature wider than ``hidden_dim`` declares."""

    name = "wide_hidden"
    summary = "hidden states wider than hidden_dim"

    def output(self, states):
        return [torch.cat([h, h[..., :1]], -1) for h in states]


class MissingLayer(FrameBackbone):
    """Returns one hidden state per layer but forgets the extractor's output (num_layers, not + 1)."""

    name = "missing_layer"
    summary = "num_layers hidden states"

    def output(self, states):
        return states[1:]


class ShortFrames(FrameBackbone):
    """Drops the last frame: fewer frames than num_frames() promises."""

    name = "short_frames"
    summary = "one frame short"

    def output(self, states):
        return [h[:, :-1] for h in states]


class TensorOutput(FrameBackbone):
    """Returns the last hidden state instead of a BackboneOutput."""

    name = "tensor_output"
    summary = "a tensor, not BackboneOutput"

    def forward(self, wav, lengths=None, frame_mask=None, instrument=False):  # type: ignore[override]
        return super().forward(wav, lengths, frame_mask, instrument).last_hidden_state


class NanHidden(FrameBackbone):
    """NaN in the last hidden state."""

    name = "nan_hidden"
    summary = "NaN features"

    def output(self, states):
        return [*states[:-1], states[-1] * float("nan")]


#: name -> (fragment of the contract check's message, fragment of the training step's error or None
#: where the training step has no structural fault to see)
BROKEN = {
    "wide_hidden": ("hidden state 0 (2, 37, 17), expected (2, 37, 16)", "hidden_states[0] must be a floating-point"),
    "missing_layer": ("2 hidden states for 2 layers (expected layers + 1)", "hidden_states must hold num_layers + 1"),
    "short_frames": ("hidden state 0 (2, 36, 16), expected (2, 37, 16)", "frames=num_frames(samples)=37"),
    "tensor_output": ("forward returned Tensor, not BackboneOutput", "forward() must return mertlab.contracts"),
    "nan_hidden": ("last hidden state holds NaN/inf on valid frames", None),
}


@hookimpl
def register_backbones(register):
    for cls in (FrameBackbone, WideHidden, MissingLayer, ShortFrames, TensorOutput, NanHidden):
        register(cls)
