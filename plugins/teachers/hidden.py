"""``hidden``: distillation targets from a frozen, already trained backbone (data2vec-style)."""

from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator
from torch import Tensor

from mertlab.contracts import Params, TargetInfo
from mertlab.errors import MertlabError
from mertlab.hookspecs import hookimpl
from mertlab.toolkit.checkpoint import backbone_depth
from mertlab.toolkit.frame_features import BackboneLayer, CheckedFrameTeacher, LayerNorm
from mertlab.toolkit.teacher_state import tensor_digest


class HiddenParams(Params):
    """Layer ``layer``, or the mean of the top ``top_k`` layers (data2vec: Baevski et al., 2022,
    arXiv 2202.03555, Sec. 3.3 "Targets": average of the top K=8 blocks, each instance-normalised),
    of a frozen backbone."""

    checkpoint: str | None = Field(
        None,
        description="The trained backbone: a mertlab backbone file (mertlab.toolkit.checkpoint.save_backbone), a training "
        ".ckpt, or hf:DIR for a local Hugging Face HubertModel / MERT directory (config.json + weights). Required.",
    )
    layer: int | None = Field(
        None,
        ge=0,
        description="Use this hidden_states index alone (0 = encoder input, i = output of layer i); unset: top_k.",
    )
    top_k: int | None = Field(
        8,
        ge=1,
        description="Average the outputs of the last top_k encoder layers (data2vec: 8); ignored when layer is set.",
    )
    normalize: LayerNorm = Field(
        "frame",
        description="Per layer, before averaging: frame (each frame to zero mean / unit variance over its channels; "
        "independent of the crop, so cached = on the fly), time (each channel over the clip's frames: data2vec's "
        "instance norm for speech), none.",
    )

    @model_validator(mode="after")
    def _layer_or_top_k(self) -> HiddenParams:
        if self.layer is None and self.top_k is None:
            raise ValueError("set `layer` (one hidden state) or `top_k` (mean of the last top_k layers)")
        return self

    @model_validator(mode="after")
    def _within_the_checkpoints_depth(self) -> HiddenParams:
        """``layer``/``top_k`` against the checkpoint's layers, read from its metadata (cheap: no
        model is built, no weights read), so `mertlab validate` catches them. A checkpoint that
        cannot be read yet (not trained, moved) is reported when the teacher is built."""
        if self.checkpoint is None:
            return self
        try:
            depth = backbone_depth(self.checkpoint)
        except MertlabError:
            return self
        if self.layer is not None and self.layer > depth:
            raise ValueError(
                f"layer {self.layer} does not exist: the backbone in {self.checkpoint} has {depth} layers "
                f"(hidden states 0..{depth})"
            )
        if self.layer is None and self.top_k > depth:
            raise ValueError(
                f"top_k={self.top_k} exceeds the {depth} layers of the backbone in {self.checkpoint} "
                f"(set top_k <= {depth})"
            )
        return self


class HiddenTeacher(CheckedFrameTeacher):
    """Continuous targets ``[B, T, hidden_dim]`` at the frozen backbone's frame rate and frame
    count: a conv frontend gives ``floor((S - window) / hop) + 1`` frames for ``S`` samples
    (the quickstart's 2048-sample filterbank 6 fewer than ``S / hop``), declared as
    ``info.receptive_field`` so the boundary check expects them; alignment then pads the frames
    the student has past them (they carry no loss), as for any teacher.

    For distilling a large released model into a small student: the student's objective
    (``masked_regression``) predicts these frames. Audio is read at the backbone's sample
    rate; clips run one at a time (see :class:`mertlab.toolkit.frame_features.BackboneLayer`). The
    fingerprint covers a digest of the backbone's weights, so retraining the model behind the
    same path invalidates cached targets.
    """

    name = "hidden"
    summary = "Distillation: layer L or mean of the top-K layers of a frozen backbone (mertlab checkpoint or hf:DIR)"
    Params = HiddenParams
    target_kind = "continuous"
    #: With a tiny backbone (2 layers) as ``checkpoint``, which tests supply.
    test_params = {"top_k": 2}
    params: HiddenParams

    def __init__(self, params: HiddenParams) -> None:
        super().__init__(params)
        if params.checkpoint is None:
            raise MertlabError(
                f"teacher '{self.name}' needs params.checkpoint: a trained mertlab backbone file, a training .ckpt, or hf:DIR"
            )
        layers = params.layer if params.layer is not None else list(range(-params.top_k, 0))
        self.feature = BackboneLayer(params.checkpoint, layers, params.normalize)
        depth = self.feature.backbone.num_layers
        if params.layer is None and params.top_k > depth:
            raise MertlabError(
                f"teacher '{self.name}': top_k={params.top_k} exceeds the {depth} layers of {params.checkpoint}"
            )
        self.target_info = TargetInfo(
            "continuous", self.feature.dim, self.feature.frame_rate, receptive_field=self.feature.receptive_field
        )
        self._digest = tensor_digest(sorted(self.feature.backbone.state_dict().items()))

    @property
    def sample_rate(self) -> int:
        return self.feature.sample_rate

    def frame_targets(self, wav: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        return self.feature(wav, lengths)

    def fingerprint_payload(self) -> Any:
        return {"backbone": self._digest}


@hookimpl
def register_teachers(register) -> None:
    register(HiddenTeacher)
