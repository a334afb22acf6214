"""State files of fitted teachers (``kmeans`` centroids, the ``melrvq`` tokenizer...), and
:class:`FittedFrameTeacher`, the base of teachers fitted offline on standardised frames.

A state file is a safetensors file: the tensors, and in its JSON header the ``format`` string
and the ``config`` the state was fitted with -- no pickled code can run when it is read (an
older ``torch.save`` of the same dict still loads, with ``weights_only=True``).
:func:`save_state_file` writes it atomically (readers never see half a file);
:func:`load_state_file` checks the format and that the stored config equals the teacher's
current one, so a state never silently loads into a teacher it was not fitted for.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor

from mertlab.errors import MertlabError
from mertlab.toolkit.frame_features import CheckedFrameTeacher, FrameFeature, collect_frames, fit_statistics
from mertlab.toolkit.safe_load import is_safetensors, load_torch_file, read_safetensors, write_safetensors


def save_state_file(
    path: str | Path, format: str, config: dict[str, Any], tensors: dict[str, Tensor], *, config_key: str = "config"
) -> Path:
    """Write ``tensors`` with ``{"format", config_key: config}`` as safetensors to ``path`` atomically."""
    return write_safetensors(path, tensors, {"format": format, config_key: config})


def load_state_file(
    path: str | Path, format: str, config: dict[str, Any], who: str, *, config_key: str = "config"
) -> dict[str, Any]:
    """Read a file written by :func:`save_state_file` with ``weights_only=True``.

    Raises one-line :class:`MertlabError` s naming ``path`` when it is missing, unreadable, of
    another format, or fitted with a config that differs from ``config`` (listing the fields).
    """
    path = Path(path)
    if not path.is_file():
        raise MertlabError(f"{who}: state file {path} not found; run `mertlab teachers fit SPEC` to write it")
    if is_safetensors(path):
        tensors, meta = read_safetensors(path, f"{who} state file")
        state: Any = {**meta, **tensors}
    else:
        state = load_torch_file(path, f"{who} state file")
    if not isinstance(state, dict) or state.get("format") != format:
        raise MertlabError(f"{path}: not a {who} state file (expected format {format})")
    stored = state.get(config_key) or {}
    differ = sorted(k for k in stored.keys() | config.keys() if stored.get(k) != config.get(k))
    if differ:
        detail = ", ".join(f"{k}: file {stored.get(k)!r} vs params {config.get(k)!r}" for k in differ)
        raise MertlabError(f"{path} was fitted with different settings ({detail}); rerun `mertlab teachers fit SPEC`")
    return state


def tensor_digest(tensors: Iterable[tuple[str, Tensor]]) -> str:
    """SHA-256 (16 hex digits) over the names and bytes of ``tensors``, for teacher fingerprints."""
    h = hashlib.sha256()
    for name, t in tensors:
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


class FittedFrameTeacher(CheckedFrameTeacher):
    """A frame teacher fitted offline (``mertlab teachers fit``) on its :attr:`feature`'s frames,
    standardised per dimension with the fitting data's mean/std (``kmeans``, ``melrvq``).

    It keeps the statistics (non-persistent buffers: the state file is the source of truth), names
    its state file by the params field :attr:`state_param`, gives the config a state file must
    match (the params minus :attr:`fit_only_fields`), and says what to run when targets are asked
    for before the state exists. A subclass sets :attr:`feature` and the attributes below,
    implements ``fit``, ``save_state`` and ``load_state`` (which sets the statistics), and calls
    :meth:`load_state_if_present` at the end of its constructor.
    """

    requires_fit = True
    #: The params field holding the state file's path (``centroids``, ``tokenizer``).
    state_param: ClassVar[str]
    #: Params that only steer fitting or name the state file: they do not change what a state means.
    fit_only_fields: ClassVar[frozenset[str]]
    feature: FrameFeature
    #: Per-dimension statistics of the fitting frames (buffers; empty until fitted).
    feature_mean: Tensor
    feature_std: Tensor

    def __init__(self, params: Any) -> None:
        super().__init__(params)
        self.register_buffer("feature_mean", torch.zeros(0), persistent=False)
        self.register_buffer("feature_std", torch.zeros(0), persistent=False)

    @property
    def fitted(self) -> bool:
        return self.feature_mean.numel() > 0

    def state_file(self) -> str | None:
        return getattr(self.params, self.state_param)

    def state_config(self) -> dict[str, Any]:
        """What the state was fitted on; a state file only loads into a matching teacher."""
        return {k: v for k, v in self.params.model_dump(mode="json").items() if k not in self.fit_only_fields}

    def load_state(self, path: str | Path) -> None:
        """Load the fitted state (and the statistics) from ``path``."""
        raise NotImplementedError(f"teacher '{self.name}' does not define load_state")

    def load_state_if_present(self) -> None:
        path = self.state_file()
        if path is not None and Path(path).is_file():
            self.load_state(path)

    def standardise(self, feats: Tensor) -> Tensor:
        return (feats - self.feature_mean) / self.feature_std

    def require_state(self) -> None:
        """Load the state file if it was written after this teacher was built; else say what to run."""
        if self.fitted:
            return
        path = self.state_file()
        if path is None:
            raise MertlabError(
                f"teacher '{self.name}' is not fitted: set params.{self.state_param} to a file path and run "
                "`mertlab teachers fit SPEC` to fit it and write that file"
            )
        if not Path(path).is_file():
            raise MertlabError(
                f"teacher '{self.name}': {self.state_param} file {path} not found; run `mertlab teachers fit SPEC` "
                "to fit it on the training audio and write it"
            )
        self.load_state(path)

    def standardised_fit_frames(
        self, batches: Iterable[tuple[Tensor, Tensor]], device: torch.device, progress: bool
    ) -> tuple[Tensor, Tensor, Tensor]:
        """``(standardised frames, mean, std)`` of at most ``params.max_fit_frames`` valid frames
        of ``batches`` (``(wav [B, S], lengths [B])``), on ``device``."""
        with torch.no_grad():
            x = collect_frames(
                self.feature, batches, self.params.max_fit_frames, device, f"teacher '{self.name}'", progress
            )
        mean, std = fit_statistics(x)
        return (x - mean) / std, mean, std
