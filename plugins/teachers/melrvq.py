"""``melrvq``: MuQ's Mel residual vector quantisation, a learned tokenizer fitted offline."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from pydantic import Field
from torch import Tensor

from mertlab.contracts import Params, TargetInfo
from mertlab.errors import MertlabError
from mertlab.hookspecs import hookimpl
from mertlab.toolkit.code_usage import codebook_perplexities
from mertlab.toolkit.frame_features import StackedLogMel
from mertlab.toolkit.rvq import ResidualLinearVQ, RVQFitSettings, fit_rvq
from mertlab.toolkit.teacher_state import FittedFrameTeacher, load_state_file, save_state_file, tensor_digest

STATE_FORMAT = "mertlab-melrvq-v1"
#: Frames :meth:`MelRVQTeacher.code_usage` encodes at the end of a fit (a seeded sample).
REPORT_FRAMES = 50_000
#: Params that only steer fitting or name the state file: they do not change what a state means.
FIT_ONLY_FIELDS = frozenset(
    {
        "tokenizer",
        "seed",
        "steps",
        "batch_size",
        "lr",
        "commitment_weight",
        "codebook_weight",
        "dead_code_steps",
        "max_fit_frames",
    }
)


class MelRVQParams(Params):
    """Mel-RVQ (MuQ: Zhu et al., 2025, arXiv 2501.01108, Sec. 3.2 and its released code
    ``src/muq/muq/models/muq_model.py`` / ``modules/rvq.py``): 128-bin mel of 24 kHz audio,
    n_fft 2048, hop 240 (100 Hz), 4 frames stacked (25 Hz labels), normalised, 8 residual
    codebooks of 1024 codes in 16 dimensions; loss = L1 reconstruction + codebook + 0.25 x
    commitment; codes unused for 100 steps restarted."""

    sample_rate: int = Field(24000, gt=0, description="Sample rate (Hz) the teacher expects (MuQ: 24 kHz).")
    n_fft: int = Field(2048, gt=0, description="STFT size (Hann window) of the mel (MuQ: 2048).")
    hop_length: int = Field(
        240,
        gt=0,
        description="Mel hop in samples (MuQ: 240 = 100 Hz at 24 kHz); frame rate = sample_rate / (hop_length * stack_frames).",
    )
    n_mels: int = Field(128, gt=0, description="Mel bands (MuQ: 128).")
    stack_frames: int = Field(
        4, ge=1, description="Consecutive mel frames quantised as one target frame (MuQ: 4 -> 25 Hz labels)."
    )
    n_codebooks: int = Field(8, ge=1, description="Residual codebooks = target channels (MuQ: 8).")
    codebook_size: int = Field(1024, ge=2, description="Codes per codebook (MuQ: 1024).")
    codebook_dim: int = Field(
        16, ge=1, description="Dimension of the projected space each codebook lives in (MuQ: 16)."
    )
    tokenizer: str | None = Field(
        None,
        description="File holding the fitted tokenizer; written by `mertlab teachers fit SPEC`, loaded when present.",
    )
    seed: int = Field(0, description="Seed of the initial weights, the codebook initialisation and batch sampling.")
    steps: int = Field(2000, ge=1, description="Optimisation steps of the fit (mertlab choice; MuQ does not state it).")
    batch_size: int = Field(
        1024,
        ge=1,
        description="Frames per fitting step (mertlab choice: on the quickstart data 1024, 2048 and 4096 reach the "
        "same held-out reconstruction error in 2000 steps).",
    )
    lr: float = Field(1e-3, gt=0, description="Adam learning rate of the fit (mertlab choice).")
    commitment_weight: float = Field(
        0.25, ge=0, description="Weight of the commitment term ||z - sg(e)||^2 (MuQ's code: 0.25)."
    )
    codebook_weight: float = Field(
        1.0, ge=0, description="Weight of the codebook term ||sg(z) - e||^2 (MuQ's code: 1.0)."
    )
    dead_code_steps: int = Field(
        100,
        ge=1,
        description="A code unused for this many consecutive steps is restarted on a random frame (MuQ's code: 100).",
    )
    max_fit_frames: int = Field(
        200_000,
        ge=2,
        description="fit() trains on at most this many frames: the first ones its batches yield (`mertlab teachers "
        "fit` draws them from random crops all over the training files, as many passes as they need, at most 20).",
    )


class MelRVQTeacher(FittedFrameTeacher):
    """Codes ``[B, T, n_codebooks]`` (int64 in ``[0, codebook_size)``) of MuQ's Mel-RVQ.

    Frames: log-mel (``log(mel power + 1e-6)``; MuQ uses dB, the same up to a scale that the
    normalisation removes), ``stack_frames`` consecutive frames concatenated, each dimension
    standardised with the mean/std of the fitting data (kept in the state file; MuQ also
    normalises with dataset statistics). Then :class:`mertlab.toolkit.rvq.ResidualLinearVQ`.

    Fit once with ``mertlab teachers fit SPEC``: :meth:`fit` trains the tokenizer on the spec's
    training audio (progress bar with the reconstruction error; :attr:`fit_history` keeps it),
    :meth:`save_state` writes ``params.tokenizer`` (plain tensors, loaded with
    ``weights_only=True``), which the teacher loads when built. A clip of ``n`` samples gives
    ``(1 + n // hop_length) // stack_frames`` frames.
    """

    name = "melrvq"
    summary = "Mel-RVQ: learned residual VQ of stacked log-mel frames, fitted offline (MuQ)"
    Params = MelRVQParams
    target_kind = "discrete"
    state_param = "tokenizer"
    fit_only_fields = FIT_ONLY_FIELDS
    test_params = {"n_mels": 32, "n_codebooks": 2, "codebook_size": 16, "steps": 50, "batch_size": 256}
    params: MelRVQParams

    def __init__(self, params: MelRVQParams) -> None:
        super().__init__(params)
        p = params
        self.feature = StackedLogMel(p.sample_rate, p.n_fft, p.hop_length, p.n_mels, p.stack_frames, self.label)
        with torch.random.fork_rng(devices=[]):  # seeded weights, global RNG untouched
            torch.manual_seed(p.seed)
            self.rvq = ResidualLinearVQ(self.feature.dim, p.n_codebooks, p.codebook_size, p.codebook_dim)
        self.rvq.requires_grad_(False).eval()
        self.target_info = TargetInfo(
            "discrete", p.n_codebooks, self.feature.frame_rate, (p.codebook_size,) * p.n_codebooks
        )
        self.fit_history: list[float] = []
        self.load_state_if_present()

    def train(self, mode: bool = True) -> MelRVQTeacher:
        super().train(mode)
        self.rvq.eval()  # frozen outside fit()
        return self

    # ----------------------------------------------------------------- targets
    def frame_targets(self, wav: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        self.require_state()
        feats, frame_lengths = self.feature(wav, lengths)
        return self.rvq.encode(self.standardise(feats).flatten(0, 1)).view(*feats.shape[:2], -1), frame_lengths

    @torch.no_grad()
    def reconstruct(self, wav: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """``(standardised frames, their reconstruction from the codes)``, both ``[B, T, dim]``."""
        feats, _ = self.feature(wav.float(), lengths.to(wav.device))
        x = self.standardise(feats)
        codes = self.rvq.encode(x.flatten(0, 1))
        return x, self.rvq.decode(codes).view_as(x)

    # ----------------------------------------------------------------- fitting
    def fit(self, batches: Iterable[tuple[Tensor, Tensor]], progress: bool = True) -> None:
        """Train the tokenizer on the valid frames of ``batches`` (``(wav [B, S], lengths [B])`` at
        :attr:`sample_rate`), at most ``max_fit_frames`` of them, on this teacher's device."""
        p = self.params
        device = self.feature.window.device
        x, mean, std = self.standardised_fit_frames(batches, device, progress)
        settings = RVQFitSettings(
            steps=p.steps,
            batch_size=p.batch_size,
            lr=p.lr,
            commitment_weight=p.commitment_weight,
            codebook_weight=p.codebook_weight,
            dead_code_steps=p.dead_code_steps,
            seed=p.seed,
        )
        with torch.random.fork_rng(devices=[]):  # fresh seeded weights: refitting gives the same tokenizer
            torch.manual_seed(p.seed)
            rvq = ResidualLinearVQ(self.feature.dim, p.n_codebooks, p.codebook_size, p.codebook_dim).to(device)
        with torch.enable_grad():
            self.fit_history = fit_rvq(rvq, x, settings, progress, desc=f"{self.name} fit")
        self.rvq.load_state_dict(rvq.state_dict())
        self.feature_mean, self.feature_std = mean, std
        self._fit_report = self.code_usage(x)

    @torch.no_grad()
    def code_usage(self, x: Tensor, max_frames: int = REPORT_FRAMES) -> dict[str, float]:
        """On (at most ``max_frames`` seeded draws of) the standardised frames ``x``: the
        perplexity of each codebook's codes (``perplexity/cb<i>``: how many codes are effectively
        used, at most ``codebook_size``), the frames and the L1 reconstruction error (``recon_l1``)."""
        rows = torch.randperm(len(x), generator=torch.Generator().manual_seed(self.params.seed))[:max_frames]
        sample = x[rows.to(x.device)]
        codes = self.rvq.encode(sample)
        report = {"frames": float(len(x)), "recon_l1": float((self.rvq.decode(codes) - sample).abs().mean())}
        for cb, value in enumerate(codebook_perplexities(codes, self.info.vocab_sizes)):
            report[f"perplexity/cb{cb}"] = value
        return report

    def fit_report(self) -> dict[str, float]:
        """:meth:`code_usage` of the last :meth:`fit` (empty before one)."""
        return dict(getattr(self, "_fit_report", {}))

    # ----------------------------------------------------------------- persistence
    def save_state(self, path: str | Path) -> Path:
        """Write the tokenizer weights, feature statistics and :meth:`state_config` to ``path``."""
        if not self.fitted:
            raise MertlabError(f"teacher '{self.name}' is not fitted: call fit() before save_state()")
        tensors = {"feature_mean": self.feature_mean, "feature_std": self.feature_std}
        tensors.update({f"rvq.{k}": v for k, v in self.rvq.state_dict().items()})
        return save_state_file(path, STATE_FORMAT, self.state_config(), tensors)

    def load_state(self, path: str | Path) -> None:
        """Load a file written by :meth:`save_state`; it must match this teacher's params."""
        state = load_state_file(path, STATE_FORMAT, self.state_config(), f"teacher '{self.name}'")
        weights = {k[len("rvq.") :]: v for k, v in state.items() if k.startswith("rvq.")}
        try:
            self.rvq.load_state_dict(weights)
        except RuntimeError as exc:
            raise MertlabError(
                f"{path}: tokenizer weights do not fit params ({' '.join(str(exc).split())[:300]})"
            ) from None
        device = self.feature.window.device
        self.feature_mean, self.feature_std = state["feature_mean"].to(device), state["feature_std"].to(device)

    def fingerprint_payload(self) -> Any:
        if not self.fitted:
            return {"tokenizer": None}
        tensors = [("mean", self.feature_mean), ("std", self.feature_std), *sorted(self.rvq.state_dict().items())]
        return {"tokenizer": tensor_digest(tensors)}


@hookimpl
def register_teachers(register) -> None:
    register(MelRVQTeacher)
