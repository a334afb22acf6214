"""Test-only components, registered through the real hooks, so spec/CLI tests don't depend on
which built-ins exist. Only class attributes matter for spec validation."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from mertlab.contracts import Params
from mertlab.hookspecs import hookimpl


class ToyBackboneParams(Params):
    dim: int = Field(16, gt=0, description="Width.")
    heads: int = Field(2, gt=0, description="Attention heads.")

    @model_validator(mode="after")
    def _heads_divide_dim(self):
        if self.dim % self.heads:
            raise ValueError(f"heads ({self.heads}) must divide dim ({self.dim})")
        return self


class ToyBackbone:
    name = "toy_backbone"
    summary = "toy backbone"
    Params = ToyBackboneParams


class ToyRVQParams(Params):
    n_codebooks: int = Field(8, gt=0, description="Codebooks.")


class ToyRVQ:
    name = "toy_rvq"
    summary = "toy discrete teacher"
    Params = ToyRVQParams
    target_kind = "discrete"


class ToyCQTParams(Params):
    n_bins: int = Field(84, gt=0, description="Bins.")
    magnitude: Literal["linear", "log"] = Field("linear", description="Magnitude scale.")


class ToyCQT:
    name = "toy_cqt"
    summary = "toy continuous teacher"
    Params = ToyCQTParams
    target_kind = "continuous"


class WeightParams(Params):
    layer: int = Field(-1, description="Layer.")


class ToyPrediction:
    name = "toy_prediction"
    summary = "toy CE objective"
    Params = WeightParams
    accepts = ("discrete",)


class ToyRegression:
    name = "toy_regression"
    summary = "toy MSE objective"
    Params = WeightParams
    accepts = ("continuous",)


class SpanParams(Params):
    mask_prob: float = Field(0.8, ge=0, le=1, description="Start probability.")


class ToySpan:
    name = "toy_span"
    summary = "toy masking"
    Params = SpanParams


class GainParams(Params):
    gain: float = Field(2.0, description="Factor on every valid sample.")


class ToyGain:
    """A third-party augmentation as a plugin package would write it: scales the valid samples
    and records each call (the input, the output and the generator's first draw)."""

    name = "toy_gain"
    summary = "toy augmentation: scales the student input"
    Params = GainParams
    calls: list[dict] = []

    def __init__(self, params):
        self.params = params

    def __call__(self, wav, lengths, generator=None):
        import torch

        valid = torch.arange(wav.shape[1], device=wav.device)[None, :] < lengths[:, None]
        out = torch.where(valid, wav * self.params.gain, wav)
        draw = torch.rand(1, generator=generator).item()
        ToyGain.calls.append({"input": wav.detach().clone(), "output": out.detach().clone(), "draw": draw})
        return out


@hookimpl
def register_backbones(register):
    register(ToyBackbone)


@hookimpl
def register_teachers(register):
    register(ToyRVQ)
    register(ToyCQT)


@hookimpl
def register_objectives(register):
    register(ToyPrediction)
    register(ToyRegression)


@hookimpl
def register_maskings(register):
    register(ToySpan)


@hookimpl
def register_augmentations(register):
    register(ToyGain)


TOY_SPEC = {
    "name": "toy",
    "backbone": {"name": "toy_backbone", "params": {"dim": 32}},
    "teachers": {"rvq": {"name": "toy_rvq"}, "cqt": {"name": "toy_cqt", "params": {"n_bins": 84}}},
    "objectives": {
        "rvq_pred": {"name": "toy_prediction", "teacher": "rvq", "weight": 1.0},
        "cqt_recon": {"name": "toy_regression", "teacher": "cqt", "weight": 0.5},
    },
    "masking": {"name": "toy_span"},
}
