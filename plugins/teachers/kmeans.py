"""``kmeans``: k-means pseudo-labels over a frame feature (HuBERT iterations 1 and 2, MERT-v0)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field, model_validator
from torch import Tensor

from mertlab.contracts import Params, TargetInfo
from mertlab.errors import MertlabError
from mertlab.hookspecs import hookimpl
from mertlab.toolkit.frame_features import BackboneLayer, FrameFeature, LogMelChroma, MFCCDeltas
from mertlab.toolkit.kmeans import KMeansInit, fit_minibatch_kmeans, nearest_centroid
from mertlab.toolkit.teacher_state import FittedFrameTeacher, load_state_file, save_state_file, tensor_digest

STATE_FORMAT = "mertlab-kmeans-v2"  # safetensors + JSON metadata (core/toolkit/teacher_state.py)
#: Params that only steer fitting or name the state file: they do not change the features.
FIT_ONLY_FIELDS = frozenset({"centroids", "seed", "n_iter", "batch_size", "init", "max_fit_frames"})


class KMeansParams(Params):
    """k-means teacher; defaults follow HuBERT iteration 1 (100 clusters of 39-dim MFCC) at
    MERT's 24 kHz / 75 Hz frame grid (the MERT paper (arXiv 2306.00107) and its peers)."""

    feature: Literal["mfcc", "logmel_chroma", "hidden"] = Field(
        "mfcc",
        description="Frame feature clustered: mfcc (n_mfcc MFCC + deltas + delta-deltas, HuBERT iteration 1), "
        "logmel_chroma (log-mel + 12-bin chroma, MERT-v0), hidden (layer `layer` of the backbone in "
        "`checkpoint`, HuBERT iteration 2).",
    )
    n_clusters: int = Field(
        100, ge=2, description="Number of clusters = vocabulary size (HuBERT: 100, iteration 2: 500)."
    )
    sample_rate: int = Field(
        24000, gt=0, description="Sample rate (Hz) of mfcc/logmel_chroma (hidden uses the backbone's)."
    )
    hop_length: int = Field(
        320,
        gt=0,
        description="Hop in samples of mfcc/logmel_chroma; frame rate = sample_rate / hop_length (320 -> 75 Hz).",
    )
    n_fft: int = Field(2048, gt=0, description="STFT size (Hann window) of mfcc/logmel_chroma.")
    n_mels: int = Field(128, gt=0, description="Mel bands of mfcc/logmel_chroma.")
    n_mfcc: int = Field(13, gt=0, description="MFCCs before deltas (feature dim = 3 * n_mfcc; HuBERT: 13 -> 39).")
    checkpoint: str | None = Field(
        None,
        description="feature=hidden: backbone file (mertlab.toolkit.checkpoint.save_backbone), training .ckpt, or hf:DIR "
        "(a local Hugging Face HubertModel / MERT directory: HuBERT iteration 2 from a released model).",
    )
    layer: int = Field(
        6, ge=0, description="feature=hidden: index into hidden_states (0 = encoder input; HuBERT base iteration 2: 6)."
    )
    centroids: str | None = Field(
        None, description="File holding the fitted state; written by `mertlab teachers fit SPEC`, loaded when present."
    )
    seed: int = Field(0, description="Seed of k-means initialisation and mini-batch sampling.")
    n_iter: int = Field(100, ge=1, description="Mini-batch k-means iterations.")
    batch_size: int = Field(10000, ge=1, description="Frames per k-means mini-batch.")
    init: KMeansInit = Field("kmeans++", description="Centroid initialisation: kmeans++ or random (distinct frames).")
    max_fit_frames: int = Field(
        200_000, ge=1, description="fit() clusters at most this many frames: the first ones its batches yield."
    )

    @model_validator(mode="after")
    def _checkpoint_iff_hidden(self) -> KMeansParams:
        if self.feature == "hidden" and self.checkpoint is None:
            raise ValueError("feature=hidden needs `checkpoint`: a trained mertlab backbone file")
        if self.feature != "hidden" and self.checkpoint is not None:
            raise ValueError(f"`checkpoint` is only used by feature=hidden (feature is {self.feature}); remove it")
        return self


#: How each ``feature`` value is built: one place, no branching on names elsewhere.
FEATURES: dict[str, Callable[[KMeansParams], FrameFeature]] = {
    "mfcc": lambda p: MFCCDeltas(p.sample_rate, p.n_fft, p.hop_length, p.n_mels, p.n_mfcc),
    "logmel_chroma": lambda p: LogMelChroma(p.sample_rate, p.n_fft, p.hop_length, p.n_mels),
    "hidden": lambda p: BackboneLayer(p.checkpoint, p.layer),
}


class KMeansTeacher(FittedFrameTeacher):
    """Nearest-centroid codes ``[B, T, 1]`` (int64 in ``[0, n_clusters)``) of a frame feature.

    Fit once with ``mertlab teachers fit SPEC`` (it calls :meth:`fit` on a sample of the training
    audio, then :meth:`save_state` to ``params.centroids``); the teacher loads that file when built.
    Features are standardised per dimension with the mean/std of the fitting data (stored in the
    state file), so no dimension dominates the Euclidean distance.
    """

    name = "kmeans"
    summary = "k-means pseudo-labels of MFCC / log-mel+chroma / backbone-layer frames (HuBERT-style)"
    Params = KMeansParams
    target_kind = "discrete"
    state_param = "centroids"
    fit_only_fields = FIT_ONLY_FIELDS
    params: KMeansParams

    def __init__(self, params: KMeansParams) -> None:
        super().__init__(params)
        self.feature = FEATURES[params.feature](params)
        self.target_info = TargetInfo(
            "discrete", 1, self.feature.frame_rate, (params.n_clusters,), self.feature.receptive_field
        )
        # the state file is the source of truth: keep it out of state_dict (non-persistent)
        self.register_buffer("centroids", torch.zeros(0), persistent=False)
        self._backbone_digest = (
            tensor_digest(sorted(self.feature.state_dict().items())) if params.feature == "hidden" else None
        )
        self.load_state_if_present()

    @property
    def sample_rate(self) -> int:
        return self.feature.sample_rate

    # ----------------------------------------------------------------- targets
    def frame_targets(self, wav: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        self.require_state()
        feats, frame_lengths = self.feature(wav, lengths)
        codes = nearest_centroid(self.standardise(feats).flatten(0, 1), self.centroids)
        return codes.view(*feats.shape[:2], 1), frame_lengths

    # ----------------------------------------------------------------- fitting
    @torch.no_grad()
    def fit(self, batches: Iterable[tuple[Tensor, Tensor]], progress: bool = True) -> None:
        """Cluster the valid frames of ``batches`` (``(wav [B, S], lengths [B])`` at
        :attr:`sample_rate`), at most ``max_fit_frames`` of them, on this teacher's device."""
        x, mean, std = self.standardised_fit_frames(batches, self.centroids.device, progress)
        centroids = fit_minibatch_kmeans(
            x,
            self.params.n_clusters,
            n_iter=self.params.n_iter,
            batch_size=self.params.batch_size,
            init=self.params.init,
            seed=self.params.seed,
            progress=progress,
        )
        self._set_state(centroids, mean, std)

    def _set_state(self, centroids: Tensor, mean: Tensor, std: Tensor) -> None:
        device = self.centroids.device
        self.centroids = centroids.float().to(device)
        self.feature_mean = mean.float().to(device)
        self.feature_std = std.float().to(device)

    # ----------------------------------------------------------------- persistence
    def state_config(self) -> dict[str, Any]:
        """What the centroids were fitted on; a state file only loads into a matching teacher."""
        config = super().state_config()
        config["backbone_digest"] = self._backbone_digest  # a retrained checkpoint at the same path differs
        return config

    def save_state(self, path: str | Path) -> Path:
        """Write centroids and feature statistics (safetensors) with :meth:`state_config`
        (JSON metadata) to ``path`` atomically."""
        if not self.fitted:
            raise MertlabError(f"teacher '{self.name}' is not fitted: call fit() before save_state()")
        tensors = {"centroids": self.centroids, "feature_mean": self.feature_mean, "feature_std": self.feature_std}
        return save_state_file(path, STATE_FORMAT, self.state_config(), tensors, config_key="feature_config")

    def load_state(self, path: str | Path) -> None:
        """Load a file written by :meth:`save_state`; it must match this teacher's features."""
        state = load_state_file(path, STATE_FORMAT, self.state_config(), "k-means", config_key="feature_config")
        centroids = state["centroids"]
        if tuple(centroids.shape) != (self.params.n_clusters, self.feature.dim):
            raise MertlabError(
                f"{path}: centroids have shape {tuple(centroids.shape)}, expected ({self.params.n_clusters}, {self.feature.dim})"
            )
        self._set_state(centroids, state["feature_mean"], state["feature_std"])

    def fingerprint_payload(self) -> Any:
        if not self.fitted:
            return {"centroids": None}
        return {
            "centroids": tensor_digest(
                [("centroids", self.centroids), ("mean", self.feature_mean), ("std", self.feature_std)]
            ),
            "backbone": self._backbone_digest,
        }


@hookimpl
def register_teachers(register) -> None:
    register(KMeansTeacher)
